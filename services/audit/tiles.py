"""The Merkle tree stored as tiles (C2SP tlog-tiles, Go's sumdb/tlog `Tile`), of height 4: how the
PostgreSQL store keeps merkle.py's complete subtrees in ~25 times fewer rows.

Tile `(L, N)` holds, concatenated, the hashes of tree level `4·L` at indexes `16·N ... 16·N + W − 1`; a
tile is written again, wider, each time an append adds hashes to it, and the old narrower rows stay
(append-only), so a row `(L, N, W)` is a prefix of every wider one. Any stored node `(level, index)`
with `level = 4·L + r` is the root of the `2^r` consecutive level-`4·L` hashes it covers, which lie in
one tile: reading a node is reading its tile and hashing at most 2^r − 1 ≤ 7 pairs.

Per record that is about 1/16 of a row instead of the two of one row per node (a batch of 500 writes
~35 rows, not ~1,000): PostgreSQL's per-row cost was a third of an Append's time under its lock.

The appender reads only the right edge: the widest-so-far tile of each tile level at the tree's size,
of exactly the width that size implies (`edge_tiles`), from which the frontier follows. A proof reads
the widest row of each tile it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ztmesh.audit.merkle import HASH_SIZE, NodeId, ProofError, node_hash

TILE_HEIGHT = 4
TILE_WIDTH = 1 << TILE_HEIGHT

TileId = tuple[int, int]  # (tile level L: tree level 4·L, tile index N)
TileRow = tuple[int, int, int, bytes]  # (L, N, width, the width hashes concatenated)
# Reads tiles: {tile: the width it must have at least} -> {tile: its hashes}, the tiles not stored left out.
TileLoader = Callable[[Mapping[TileId, int]], Mapping[TileId, bytes]]


def _place(node: NodeId) -> tuple[TileId, int, int]:
    """The tile holding what `node` folds, the offset of its first hash there, and how many it folds."""
    level, index = node
    tile_level, rise = divmod(level, TILE_HEIGHT)
    first = index << rise
    return (tile_level, first >> TILE_HEIGHT), first & (TILE_WIDTH - 1), 1 << rise


def _fold_pairs(hashes: bytes, count: int) -> bytes:
    """The root of `count` (a power of two) consecutive hashes: a complete subtree."""
    level = [hashes[i : i + HASH_SIZE] for i in range(0, count * HASH_SIZE, HASH_SIZE)]
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def tiles_needed(ids: Iterable[NodeId]) -> dict[TileId, int]:
    """The tiles the nodes `ids` lie in, each with the least width that holds all of them."""
    wanted: dict[TileId, int] = {}
    for node in ids:
        tile, offset, count = _place(node)
        wanted[tile] = max(wanted.get(tile, 0), offset + count)
    return wanted


def nodes_from_tiles(ids: Sequence[NodeId], tiles: Mapping[TileId, bytes]) -> list[bytes]:
    """The hashes of `ids`, in order, from the tiles read for them; a node no tile holds is a ProofError
    (a store whose tree lost a row must say so, not prove something else)."""
    out = []
    for node in ids:
        tile, offset, count = _place(node)
        hashes = tiles.get(tile, b"")
        if len(hashes) < (offset + count) * HASH_SIZE:
            raise ProofError(f"Merkle tree node {node} is not stored")
        out.append(_fold_pairs(hashes[offset * HASH_SIZE :], count))
    return out


def read_nodes(ids: Sequence[NodeId], load: TileLoader) -> list[bytes]:
    """merkle.NodeReader.read_nodes over a tile store: one load for all the tiles `ids` need."""
    return nodes_from_tiles(ids, load(tiles_needed(ids))) if ids else []


def edge_tiles(size: int) -> dict[TileId, int]:
    """The right edge of a tree of `size` leaves: at each tile level, the partly filled tile and its width
    (base-16 digits of `size`). The frontier lies in them, and an append extends them."""
    edge = {}
    tile_level = 0
    while size >> (tile_level * TILE_HEIGHT):
        width = (size >> (tile_level * TILE_HEIGHT)) & (TILE_WIDTH - 1)
        if width:
            edge[(tile_level, size >> ((tile_level + 1) * TILE_HEIGHT))] = width
        tile_level += 1
    return edge


class TileEdge:
    """An appender's view of the tiles at the tree's right edge, read once (`load`, exact widths) when
    first needed; `read_nodes` serves the frontier from them, `extend` turns an append's new nodes into
    the tile rows to write and moves the edge after them."""

    def __init__(self, size: int, load: TileLoader, known: Mapping[TileId, bytes] | None = None) -> None:
        self.size = size
        self._load = load
        self._known = known or {}  # tiles read already (with the head): used where they are the edge
        self._tiles: dict[TileId, bytes] | None = None

    def _edge(self) -> dict[TileId, bytes]:
        if self._tiles is None:
            wanted = edge_tiles(self.size)
            found = {t: h for t, h in self._known.items() if len(h) == wanted.get(t, 0) * HASH_SIZE}
            missing = {t: width for t, width in wanted.items() if t not in found}
            if missing:
                found.update(self._load(missing))
            for tile, width in wanted.items():
                if len(found.get(tile, b"")) != width * HASH_SIZE:
                    raise ProofError(f"Merkle tree tile {tile} of width {width} is not stored")
            self._tiles = found
        return self._tiles

    def read_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return nodes_from_tiles(ids, self._edge())

    def extend(self, nodes: Iterable[tuple[NodeId, bytes]]) -> list[TileRow]:
        """The rows for the nodes an append completed (merkle.append_leaves' output, in its order: each
        level's new indexes ascending, continuing the edge). Only the levels tiles store are kept."""
        edge = self._edge()
        touched: dict[TileId, bytearray] = {}
        leaves = 0
        for (level, index), digest in nodes:
            if level == 0:
                leaves += 1
            tile_level, rise = divmod(level, TILE_HEIGHT)
            if rise:
                continue
            tile = (tile_level, index >> TILE_HEIGHT)
            grown = touched.get(tile)
            if grown is None:
                grown = touched[tile] = bytearray(edge.get(tile, b""))
            if len(grown) != (index & (TILE_WIDTH - 1)) * HASH_SIZE:
                raise ProofError(f"Merkle tree node {(level, index)} does not continue tile {tile}")
            grown += digest
        self.size += leaves
        rows = [(tile[0], tile[1], len(h) // HASH_SIZE, bytes(h)) for tile, h in touched.items()]
        for tile_level, index, width, hashes in rows:  # each level's last tile written is its new edge
            for old in [t for t in edge if t[0] == tile_level]:
                del edge[old]
            if width < TILE_WIDTH:
                edge[(tile_level, index)] = hashes
        if set(edge_tiles(self.size)) != set(edge):
            raise ProofError(f"the tile edge does not match a tree of {self.size} leaves")
        return rows


def tile_rows(nodes: Mapping[NodeId, bytes]) -> list[TileRow]:
    """Every tile of a whole tree's stored nodes, at its full width (a migration, a bench log, a test)."""
    by_tile: dict[TileId, dict[int, bytes]] = {}
    for (level, index), digest in nodes.items():
        tile_level, rise = divmod(level, TILE_HEIGHT)
        if not rise:
            by_tile.setdefault((tile_level, index >> TILE_HEIGHT), {})[index & (TILE_WIDTH - 1)] = digest
    rows = []
    for (tile_level, index), hashes in sorted(by_tile.items()):
        if sorted(hashes) != list(range(len(hashes))):
            raise ProofError(f"Merkle tree tile {(tile_level, index)} has a gap")
        rows.append((tile_level, index, len(hashes), b"".join(hashes[i] for i in range(len(hashes)))))
    return rows
