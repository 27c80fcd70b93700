"""Image quilting: a large sheet sewn from pieces of several photos of one kind of ground.

The fine band's cells are a few hundred metres wide, and most aerial photos of the training split
are 40-80 m (UC Merced, NEON). A cell cannot show one photo, and a collage of whole photos with
straight fades between them reads as a collage. Quilting (Efros & Freeman, SIGGRAPH 2001) lays
pieces in overlapping rows, picks each among random candidates by how well it agrees with what is
already laid in the overlap, and cuts the seam along the path of least difference through the
overlap, so the seam follows edges the two photos share (a hedge, a street, a shadow) and two
fields or two housing tracts meet as they would on the ground. It runs once, when the atlas is
built; the server only reads the sheets.
"""

from __future__ import annotations

import numpy as np

NODATA_LEVEL = 8  # a piece with black no-data (a missing web tile) is never laid
MAX_NODATA = 0.002


def dihedral(img: np.ndarray, turn: int) -> np.ndarray:
    """One of the 8 orientations of an (H, W, C) image."""
    if turn & 4:
        img = img.transpose(1, 0, 2)
    if turn & 1:
        img = img[:, ::-1]
    if turn & 2:
        img = img[::-1]
    return img


def seam_mask(error: np.ndarray) -> np.ndarray:
    """Cheapest top-to-bottom path through an (H, W) error strip (dynamic programming, one step
    left, straight or right per row): True left of the path, where the laid sheet is kept."""
    h, w = error.shape
    cost = error.astype(np.float64).copy()
    step = np.zeros((h, w), np.int64)
    for y in range(1, h):
        prev = cost[y - 1]
        options = np.stack([np.r_[np.inf, prev[:-1]], prev, np.r_[prev[1:], np.inf]])
        best = options.argmin(0)
        step[y] = best - 1
        cost[y] += options[best, np.arange(w)]
    path = np.empty(h, np.int64)
    path[-1] = int(cost[-1].argmin())
    for y in range(h - 1, 0, -1):
        path[y - 1] = path[y] + step[y, path[y]]
    return np.arange(w)[None, :] < path[:, None]


def _pieces(images: list[np.ndarray], block: int, count: int, rng: np.random.Generator, banned: set[int],
            turns: bool = True):
    """`count` random candidate pieces: (image index, block x block piece, in one of 8 orientations
    with `turns`, else as photographed)."""
    allowed = [i for i in range(len(images)) if i not in banned] or list(range(len(images)))
    out = []
    for _ in range(count * 4):
        if len(out) == count:
            break
        i = allowed[int(rng.integers(len(allowed)))]
        img = images[i]
        y = int(rng.integers(img.shape[0] - block + 1))
        x = int(rng.integers(img.shape[1] - block + 1))
        piece = img[y:y + block, x:x + block]
        if (piece.max(-1) < NODATA_LEVEL).mean() > MAX_NODATA:
            continue
        turn = int(rng.integers(8)) if turns else 0
        out.append((i, np.ascontiguousarray(dihedral(piece, turn)).astype(np.float32)))
    return out


def quilt(images: list[np.ndarray], side: int, block: int, overlap: int, rng: np.random.Generator,
          candidates: int = 48, tolerance: float = 0.15, harmonise: float = 0.6, contrast: float = 3.0,
          turns: bool = True) -> np.ndarray:
    """A `side` x `side` uint8 sheet sewn from `block` px pieces of `images` (uint8 (H, W, 3), all at
    one ground resolution, each at least `block` px a side).

    Pieces go in rows, each overlapping the laid ones by `overlap` px, every other row shifted by
    half a piece (a brick bond: T-junctions, not the crosses of a grid that the eye picks out).
    Each is drawn among `candidates` random pieces (a random photo other than its neighbours', a
    random place in it, one of 8 orientations), its colour moved `harmonise` of the way to the
    overlap's (as mosaics of aerial photos are balanced), uniformly among those whose difference
    over the overlap is within `tolerance` of the best, and joined along the cheapest seam through
    the overlap (vertical against its left neighbour, horizontal against the row above). The
    difference counts squared pixel differences and `contrast` times the squared difference of
    their spreads, so that a smooth, blurred photo, which differs little from anything, does not
    win against textured ground. Without `turns` pieces keep the photos' orientation: sewn from
    one photo, that continues its texture (a field's rows) instead of turning it at every piece."""
    if not images or min(min(img.shape[:2]) for img in images) < block or not 0 < overlap < block:
        raise ValueError(f"quilting needs photos of at least {block} px and 0 < overlap {overlap} < block")
    stride = block - overlap
    rows = -(-(side - overlap) // stride)
    margin = stride // 2
    width = margin + side + block
    sheet = np.zeros((rows * stride + overlap, width, 3), np.float32)
    filled = np.zeros(sheet.shape[:2], bool)
    laid: list[list[tuple[int, int]]] = []  # per row: (x0, photo) of each piece
    for row in range(rows):
        y0 = row * stride
        laid.append([])
        x0 = margin - (row % 2) * margin
        while x0 < width - block + 1:
            here = sheet[y0:y0 + block, x0:x0 + block]
            known = filled[y0:y0 + block, x0:x0 + block]
            banned = {p for x, p in laid[row][-1:]}
            if row:
                banned |= {p for x, p in laid[row - 1] if abs(x - x0) < block}
            options = _pieces(images, block, candidates if known.any() else 1, rng, banned, turns)
            if known.any():
                scored = [_fitted(here, known, piece, harmonise, contrast) for _, piece in options]
                errors = np.array([e for e, _ in scored])
                good = np.flatnonzero(errors <= errors.min() * (1 + tolerance) + 1e-9)
                pick = int(good[int(rng.integers(len(good)))])
                index, piece = options[pick][0], scored[pick][1]
            else:
                index, piece = options[0]
            keep = np.zeros((block, block), bool)
            if known[:, :overlap].all():
                keep[:, :overlap] |= seam_mask(((here[:, :overlap] - piece[:, :overlap]) ** 2).sum(-1))
            if row:
                keep[:overlap] |= seam_mask(((here[:overlap] - piece[:overlap]) ** 2).sum(-1).T).T
            keep &= known
            here[~keep] = piece[~keep]
            known[:] = True
            laid[row].append((x0, index))
            x0 += stride
    return np.clip(np.rint(sheet[:side, margin:margin + side]), 0, 255).astype(np.uint8)


def _fitted(here: np.ndarray, known: np.ndarray, piece: np.ndarray, harmonise: float,
            contrast: float) -> tuple[float, np.ndarray]:
    """(difference over the overlap, the piece with its colour moved towards the overlap's)."""
    laid, new = here[known], piece[known]
    piece = piece + harmonise * (laid.mean(0) - new.mean(0))
    new = piece[known]
    error = float(((laid - new) ** 2).sum(-1).mean()) + contrast * float(((laid.std(0) - new.std(0)) ** 2).sum())
    return error, piece


def fields(images: list[np.ndarray], side: int, block: int, overlap: int, rng: np.random.Generator,
           parcel_px: tuple[int, int]) -> np.ndarray:
    """A `side` x `side` uint8 sheet of farmland: rectangular parcels `parcel_px` (smallest, largest)
    a side, each one photo's crop grown to the parcel's size (`quilt` from that photo alone, in one
    orientation for the parcel, so its rows run on unbroken), in that photo's own colour.

    Quilting a whole sheet from all the photos made a patchwork of 78 m squares whose rows turned
    at every piece, balanced to one mint green: nothing like farmland, where a field is hundreds of
    metres of one crop, and the next field another crop in another colour beyond a straight edge."""
    sheet = np.zeros((side, side, 3), np.uint8)
    for y0, x0, h, w in parcels(side, parcel_px, rng):
        photo = dihedral(images[int(rng.integers(len(images)))], int(rng.integers(8)))
        grown = quilt([photo], max(h, w), block, overlap, rng, harmonise=0.0, turns=False)
        sheet[y0:y0 + h, x0:x0 + w] = grown[:h, :w]
    return sheet


def parcels(side: int, parcel_px: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """A square of `side` px cut into rectangles (y0, x0, height, width), every side between
    `parcel_px` (smallest, largest) where the square allows: each rectangle wider than the largest is
    cut across its longer side at a random place leaving both parts at least the smallest."""
    smallest, largest = parcel_px
    todo, out = [(0, 0, side, side)], []
    while todo:
        y0, x0, h, w = todo.pop()
        longer = max(h, w)
        if longer <= largest or longer < 2 * smallest:
            out.append((y0, x0, h, w))
            continue
        cut = int(rng.integers(smallest, longer - smallest + 1))
        if h >= w:
            todo += [(y0, x0, cut, w), (y0 + cut, x0, h - cut, w)]
        else:
            todo += [(y0, x0, h, cut), (y0, x0 + cut, h, w - cut)]
    return out
