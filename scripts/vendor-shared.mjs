// npm pack's prepack/postpack of @regionsync/publisher and @regionsync/replicator:
// `node ../../scripts/vendor-shared.mjs add` puts a copy of the built @regionsync/shared into the
// package's own node_modules, where npm's bundleDependencies takes it into the tarball (the
// workspace symlink in the root node_modules is not bundled); `remove` takes the copy away again,
// so the workspace resolves the live shared/ while you develop.
import { cpSync, existsSync, readFileSync, rmSync } from 'node:fs'
import { join, resolve } from 'node:path'

const action = process.argv[2]
const pkg = process.cwd()
const shared = resolve(pkg, '../../shared')
const dest = join(pkg, 'node_modules', '@regionsync', 'shared')

if (action === 'add') {
  if (!existsSync(join(shared, 'dist', 'index.js'))) {
    console.error('vendor-shared: shared/dist is missing; run `npm run build` first')
    process.exit(1)
  }
  rmSync(dest, { recursive: true, force: true })
  cpSync(join(shared, 'package.json'), join(dest, 'package.json'))
  cpSync(join(shared, 'dist'), join(dest, 'dist'), { recursive: true, filter: (src) => !src.endsWith('.tsbuildinfo') })
  // Everything else shared's package.json ships ("files"), such as the event schema.
  const { files = [] } = JSON.parse(readFileSync(join(shared, 'package.json'), 'utf8'))
  for (const entry of files) {
    if (entry !== 'dist' && existsSync(join(shared, entry))) cpSync(join(shared, entry), join(dest, entry), { recursive: true })
  }
} else if (action === 'remove') {
  rmSync(join(pkg, 'node_modules'), { recursive: true, force: true })
} else {
  console.error('usage: node vendor-shared.mjs add|remove')
  process.exit(2)
}
