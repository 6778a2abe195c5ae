#!/usr/bin/env node
import { runDemo } from './demo.js'

// `npm run demo`: the demo is the examples workspace's own program, not a subcommand of the
// published `regionsync`, so the replicator package does not depend on the examples.
runDemo(process.argv.slice(2), {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
  env: process.env
}).then((code) => {
  process.exitCode = code
}, (err: unknown) => {
  process.stderr.write(`regionsync demo: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 3
})
