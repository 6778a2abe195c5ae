import type { ListedResource } from './region-reader.js'

/** One id of the union of every region's list, with what each region holds under it. */
export interface MergedRow {
  id: string
  /** Per region, in the order the lists were given; undefined where a region lacks the id. */
  values: Array<ListedResource | undefined>
}

/**
 * Sorted streaming merge: walks lists that are each ascending by id in step, and yields every id
 * of their union once, in order, with each list's resource under it. It holds one resource per
 * list (what the lists hold beyond that is theirs: a page), so memory does not grow with the
 * number of resources.
 */
export async function * mergeSorted (
  lists: Array<AsyncIterator<ListedResource>>,
  compare: (a: string, b: string) => number
): AsyncGenerator<MergedRow> {
  const heads: Array<ListedResource | undefined> = await Promise.all(lists.map(async (l) => await advance(l)))
  for (;;) {
    let min: string | undefined
    for (const h of heads) {
      if (h !== undefined && (min === undefined || compare(h.id, min) < 0)) min = h.id
    }
    if (min === undefined) return
    const values = heads.map((h) => h !== undefined && compare(h.id, min) === 0 ? h : undefined)
    yield { id: min, values }
    await Promise.all(values.map(async (v, i) => {
      if (v !== undefined) heads[i] = await advance(lists[i] as AsyncIterator<ListedResource>)
    }))
  }
}

async function advance (list: AsyncIterator<ListedResource>): Promise<ListedResource | undefined> {
  const r = await list.next()
  return r.done === true ? undefined : r.value
}
