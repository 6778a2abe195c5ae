import { readFile, readdir } from 'node:fs/promises'

/**
 * Resolves once every thread of process `pid` is stopped (state T or t in /proc). SIGSTOP takes
 * effect when the thread the kernel chose to handle it gets a CPU; until then the process's other
 * threads run on, so on a busy machine a "frozen" server has answered requests sent a few
 * milliseconds after kill(2) returned.
 */
export async function untilStopped (pid: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const states = await threadStates(pid)
    if (states.length > 0 && states.every((s) => s === 'T' || s === 't')) return
    if (Date.now() > deadline) throw new Error(`process ${pid} was not stopped within ${timeoutMs} ms (thread states ${states.join('')})`)
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
}

async function threadStates (pid: number): Promise<string[]> {
  const tasks = await readdir(`/proc/${pid}/task`)
  const states = await Promise.all(tasks.map(async (tid) => {
    // `pid (comm) S ...`: the state follows the last ')', since comm may hold one.
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  }))
  return states.filter((s) => s !== '')
}
