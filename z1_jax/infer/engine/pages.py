"""The host side of the paged KV cache: one `PagePool` per data shard (free pages, reference
counts, the prefix cache), and the hash chain that names a prompt's full pages.

- Pages are taken as a row grows and returned when it finishes, is cancelled or preempted.
  Page 0 is the shard's null page (unused page-table entries point there) and is never handed
  out.
- Reference counts: a page may be held by several rows (a sweep branch shares its trunk's
  pages; requests with a common prompt prefix share its pages). A row writes only into pages
  it holds alone (the engine copies a shared partial page before a branch writes into it).
- Prefix cache: a full page of prompt tokens is named by a digest chained over every token up
  to its end (`prefix_digests`), so equal digests mean equal keys and values. A page whose
  last holder lets go stays cached (least recently used first out) until the pool needs it.
  `pending` digests are pages being prefilled right now: a request that would share them
  waits one step instead of computing them twice.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Sequence

import numpy as np


def prefix_digests(tokens: Sequence[int], page_size: int, pages: int) -> list[bytes]:
  """Digests of the first `pages` full pages of `tokens`: each over its parent's digest and
  its own tokens (blake2b, so a digest names the whole prefix, not just one page)."""
  out, parent = [], b""
  arr = np.asarray(tokens, np.int64)
  for i in range(pages):
    parent = hashlib.blake2b(parent + arr[i * page_size:(i + 1) * page_size].tobytes(),
                             digest_size=16).digest()
    out.append(parent)
  return out


class PagePool:
  """One data shard's pages (see the module docstring). Ids are local to the shard."""

  def __init__(self, num_pages: int):
    self.num_pages = num_pages
    self.free: collections.deque[int] = collections.deque(range(1, num_pages))
    self.refs = np.zeros(num_pages, np.int32)
    self.by_digest: dict[bytes, int] = {}
    self.digest_of: dict[int, bytes] = {}
    self.lru: collections.OrderedDict[int, None] = collections.OrderedDict()
    self.pending: set[bytes] = set()
    self.hit_tokens = 0
    self.lookup_tokens = 0

  @property
  def capacity(self) -> int:
    """Pages a row can ever hold (all but the null page)."""
    return self.num_pages - 1

  def available(self) -> int:
    """Pages that can be handed out now: free, or cached with no holder."""
    return len(self.free) + len(self.lru)

  def used(self) -> int:
    return self.capacity - self.available()

  def alloc(self, n: int) -> list[int] | None:
    """`n` pages held once each, or None (nothing taken) when fewer are available."""
    if n > self.available():
      return None
    out = []
    for _ in range(n):
      if self.free:
        page = self.free.popleft()
      else:  # evict the least recently used cached page
        page, _ = self.lru.popitem(last=False)
        del self.by_digest[self.digest_of.pop(page)]
      self.refs[page] = 1
      out.append(page)
    return out

  def share(self, pages: Sequence[int]) -> None:
    for page in pages:
      if self.refs[page] == 0:
        self.lru.pop(page)
      self.refs[page] += 1

  def release(self, pages: Sequence[int]) -> None:
    for page in pages:
      self.refs[page] -= 1
      if self.refs[page] < 0:
        raise AssertionError(f"page {page} released more often than it was held")
      if self.refs[page] == 0:
        if page in self.digest_of:
          self.lru[page] = None
        else:
          self.free.append(page)

  def lookup(self, digests: Sequence[bytes]) -> tuple[list[int], bool]:
    """The cached pages of the longest prefix of `digests` (now held by the caller), and
    whether the prefix stops at a page someone is prefilling right now (`pending`)."""
    pages = []
    for d in digests:
      page = self.by_digest.get(d)
      if page is None:
        return self._take(pages), d in self.pending
      pages.append(page)
    return self._take(pages), False

  def _take(self, pages: list[int]) -> list[int]:
    self.share(pages)
    return pages

  def register(self, page: int, digest: bytes) -> None:
    """`page` now holds the prefix named `digest` (written by a dispatched prefill)."""
    self.pending.discard(digest)
    if digest not in self.by_digest and page not in self.digest_of:
      self.by_digest[digest] = page
      self.digest_of[page] = digest
