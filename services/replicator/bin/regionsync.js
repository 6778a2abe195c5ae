#!/usr/bin/env node
import { runCli } from '../dist/cli.js'

// runCli reports every failure itself (one line, exit 2 or 3; see `regionsync --help`); this is
// only for an error it did not catch.
runCli(process.argv.slice(2)).then((code) => {
  process.exitCode = code
}, (err) => {
  process.stderr.write(`regionsync: ${err?.stack ?? err}\n`)
  process.exitCode = 3
})
