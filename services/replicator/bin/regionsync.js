#!/usr/bin/env node
import { runCli } from '../dist/cli.js'

runCli(process.argv.slice(2)).then((code) => {
  process.exitCode = code
}, (err) => {
  process.stderr.write(`regionsync: ${err?.stack ?? err}\n`)
  process.exitCode = 1
})
