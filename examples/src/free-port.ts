import { createServer } from 'node:net'

/** A TCP port on 127.0.0.1 that nothing listens on now: for a server started next (the demo's, the tests'). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}
