"""`dfprep preview`: a contact sheet of sampled crops, so a person can see at a glance that an output is right.

Each tile is one aligned face with its landmarks as dots, a border in its label's colour (real green, fake
red), a caption with the (shortened) video id and frame, and optionally its primary-region map as a heat map.
Samples are picked from the indexes (videos.parquet, then the per-shard parquet of the chosen videos only),
so only the tars that hold a picked sample are opened, and only their safe members (image, .npy) are decoded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfprep.errors import DfprepError
from dfprep.io.payloads import PayloadError
from dfprep.io.payloads import decode_image as bounded_decode
from dfprep.io.payloads import load_landmarks
from dfprep.inspect.stats import as_storage, load_video_rows
from dfprep.io.integrity import file_sizes
from dfprep.io.keys import video_slug
from dfprep.io.layout import READ_IMAGE_TYPES, LANDMARKS_MEMBER, MAP_MEMBER, MAP_SET_NAME, MAPS_FOLDER, VIDEOS_TABLE
from dfprep.io.shards import read_samples
from dfprep.io.storage import Storage

IMAGE_EXTENSIONS = frozenset(READ_IMAGE_TYPES)

TITLE_HEIGHT = 44
BACKGROUND = (32, 32, 32)
CAPTION_BACKGROUND = (16, 16, 16)
TEXT_COLOUR = (235, 235, 235)
REAL_COLOUR = (60, 190, 40)  # BGR green
FAKE_COLOUR = (40, 40, 230)  # BGR red
LANDMARK_COLOUR = (255, 255, 0)  # BGR cyan: distinct from both label colours and skin
LABEL_COLOURS = {0: REAL_COLOUR, 1: FAKE_COLOUR}
MAP_ALPHA = 0.5
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_TILE = 48


@dataclass(frozen=True)
class Pick:
    """One sample chosen for the sheet, with what its tile shows besides pixels."""

    key: str
    shard: str
    video_id: str
    frame: int
    label: int
    split: str


@dataclass(frozen=True)
class TileLayout:
    """Where a tile's parts sit: label border all round, a square face on top, a caption strip below it."""

    tile: int

    @property
    def border(self) -> int:
        """Label-colour ring thickness: visible at any tile size."""
        return max(2, self.tile // 40)

    @property
    def caption(self) -> int:
        """Caption strip height: room for one line of small text."""
        return max(12, self.tile // 10)

    @property
    def face_side(self) -> int:
        """The face square's side: what is left once border and caption are placed."""
        return self.tile - 2 * self.border - self.caption

    @property
    def face_origin(self) -> tuple[int, int]:
        """(x, y) of the face square's top-left corner inside the tile."""
        return (self.tile - self.face_side) // 2, self.border


@dataclass
class TileContent:
    """A pick's decoded members: BGR crop, landmarks in crop pixels, optional region map."""

    pick: Pick
    image: np.ndarray
    landmarks: np.ndarray
    region_map: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------ sampling


def spread_quota(capacities: list[int], n: int) -> list[int]:
    """Deal n samples round-robin over videos (in the given order), so n videos give one each before any gives two."""
    quota = [0] * len(capacities)
    remaining = n
    while remaining > 0:
        dealt = 0
        for index, capacity in enumerate(capacities):
            if remaining == 0:
                break
            if quota[index] < capacity:
                quota[index] += 1
                remaining -= 1
                dealt += 1
        if dealt == 0:
            break
    return quota


def find_video(rows: list[dict[str, Any]], wanted: str, root: str) -> dict[str, Any]:
    """The videos.parquet row for --video: exact id, else a unique id ending or key slug."""
    matches = [r for r in rows if r["video_id"] == wanted]
    if not matches:
        matches = [r for r in rows if r["video_id"].endswith("/" + wanted) or video_slug(r["video_id"]) == wanted]
    if not matches:
        raise DfprepError(f"no video {wanted!r} in {root}/{VIDEOS_TABLE}")
    if len(matches) > 1:
        names = ", ".join(r["video_id"] for r in matches[:5])
        raise DfprepError(f"--video {wanted!r} matches {len(matches)} videos ({names}…): give the full video_id")
    row = matches[0]
    if not row["faces_written"] or not row["shard"]:
        raise DfprepError(f"video {row['video_id']} has no faces (status {row['status']}: {row['error']})")
    return row


def shard_rows(storage: Storage, shard: str, video_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """A shard's index rows for the given videos, each video's in time order."""
    try:
        table = storage.read_table(f"{shard}.parquet")
    except (OSError, ValueError) as exc:  # absent, or not parquet (pyarrow's errors derive from these)
        raise DfprepError(f"{storage.path(shard + '.parquet')}: cannot read the shard's index ({type(exc).__name__}); "
                          "`dfprep verify` lists the damage, rerunning extract repairs it") from None
    columns = [c for c in ("key", "video_id", "frame", "label", "split", "track_id") if c in table.column_names]
    by_video: dict[str, list[dict[str, Any]]] = {}
    for row in table.select(columns).to_pylist():
        if row["video_id"] in video_ids:
            by_video.setdefault(row["video_id"], []).append({**row, "shard": shard})
    for rows in by_video.values():
        rows.sort(key=lambda r: (r["frame"], r.get("track_id") or 0))
    return by_video


def _pick(row: dict[str, Any]) -> Pick:
    """An index row as a Pick."""
    return Pick(row["key"], row["shard"], row["video_id"], int(row["frame"]), int(row["label"]), row.get("split") or "")


def _index_rows(storage: Storage, videos: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Index rows of the given videos, reading only the per-shard parquets that hold them."""
    by_shard: dict[str, set[str]] = {}
    for video in videos:
        by_shard.setdefault(video["shard"], set()).add(video["video_id"])
    found: dict[str, list[dict[str, Any]]] = {}
    for shard, ids in sorted(by_shard.items()):
        found.update(shard_rows(storage, shard, ids))
    return found


def choose_samples(out: str | Storage, n: int = 48, split: str | None = None, seed: int = 0,
                   video: str | None = None) -> list[Pick]:
    """The sheet's samples: seeded and spread over videos, or every frame of one video in time order."""
    storage = as_storage(out)
    rows = load_video_rows(storage)
    if video is not None:
        row = find_video(rows, video, storage.root)
        return [_pick(r) for r in _index_rows(storage, [row]).get(row["video_id"], [])]
    if n < 1:
        raise DfprepError("--n must be at least 1")
    candidates = [r for r in rows if r["faces_written"] and r["shard"] and (split is None or r["split"] == split)]
    if not candidates:
        splits = sorted({r["split"] for r in rows if r["faces_written"]})
        raise DfprepError(f"no faces in split {split!r} of {storage.root} (splits with faces: {', '.join(splits)})")
    rng = np.random.default_rng(seed)
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    quota = spread_quota([r["faces_written"] for r in order], n)
    chosen = [(r, q) for r, q in zip(order, quota) if q]
    index = _index_rows(storage, [r for r, _ in chosen])
    picks: list[Pick] = []
    for row, count in chosen:
        frames = index.get(row["video_id"], [])
        positions = sorted(rng.choice(len(frames), size=min(count, len(frames)), replace=False)) if frames else []
        picks += [_pick(frames[p]) for p in positions]
    return picks


# ------------------------------------------------------------------------------------------------ reading


def read_members(storage: Storage, tar_name: str, keys: set[str], extensions: frozenset[str],
                 per_key: int) -> dict[str, dict[str, bytes]]:
    """Payloads of the wanted keys' members of the wanted types; stops once each key has `per_key` of them."""
    if not storage.exists(tar_name):
        raise DfprepError(f"{storage.path(tar_name)}: shard not found")
    found: dict[str, dict[str, bytes]] = {}
    complete = 0
    for key, payloads in read_samples(storage, tar_name, extensions):
        if key in keys and payloads:
            found[key] = payloads
            complete += len(payloads) == per_key
            if complete == len(keys):
                break
    return found


def decode_image(payload: bytes, flags: int, what: str) -> np.ndarray:
    """An encoded jpg/png/webp as an array, size-checked from its header; a bad member is a clear error."""
    try:
        return bounded_decode(payload, flags)
    except PayloadError as exc:
        raise DfprepError(f"{what}: {exc}") from None


def _face_content(pick: Pick, payloads: dict[str, bytes], tar_name: str) -> TileContent:
    """Decode one sample's crop and landmarks (never anything but image and .npy bytes)."""
    image_member = next((e for e in payloads if e in IMAGE_EXTENSIONS), None)
    if image_member is None or LANDMARKS_MEMBER not in payloads:
        raise DfprepError(f"{tar_name}: sample {pick.key} lacks its image or .{LANDMARKS_MEMBER} member")
    image = decode_image(payloads[image_member], cv2.IMREAD_COLOR, f"{tar_name}: {pick.key}.{image_member}")
    try:
        landmarks = load_landmarks(payloads[LANDMARKS_MEMBER])
    except PayloadError as exc:
        raise DfprepError(f"{tar_name}: {pick.key}.{LANDMARKS_MEMBER}: {exc}") from None
    return TileContent(pick, image, landmarks.astype(np.float64))


def _attach_maps(storage: Storage, shard: str, contents: list[TileContent], maps: str) -> None:
    """Join each content with its companion map (maps/<name>/<shard>.tar, same key)."""
    tar_name = f"{MAPS_FOLDER}/{maps}/{shard}.tar"
    if not storage.exists(tar_name):
        raise DfprepError(f"{storage.path(tar_name)}: no map shard for {shard} (run `dfprep maps` first)")
    payloads = read_members(storage, tar_name, {c.pick.key for c in contents}, frozenset({MAP_MEMBER}), 1)
    for content in contents:
        payload = payloads.get(content.pick.key, {}).get(MAP_MEMBER)
        if payload is None:
            raise DfprepError(f"{storage.path(tar_name)}: no {content.pick.key}.{MAP_MEMBER}")
        content.region_map = decode_image(payload, cv2.IMREAD_GRAYSCALE, f"{tar_name}: {content.pick.key}")


def check_map_set(storage: Storage, maps: str) -> None:
    """--maps names a folder under OUT/maps/ that holds map shards; else say which sets exist."""
    if not MAP_SET_NAME.match(maps):
        raise DfprepError(f"--maps {maps!r}: expected a map set name such as landmarks")
    available = sorted({name.split("/")[0] for name in file_sizes(storage, MAPS_FOLDER, recursive=True)
                        if name.endswith(".tar") and name.count("/") == 1})
    if maps not in available:
        raise DfprepError(f"no map set {maps!r} in {storage.root}/maps (available: {', '.join(available) or 'none'})")


def load_tiles(storage: Storage, picks: list[Pick], maps: str | None) -> list[TileContent]:
    """Decoded contents for the picks, opening each needed shard (and map shard) once."""
    by_shard: dict[str, list[Pick]] = {}
    for pick in picks:
        by_shard.setdefault(pick.shard, []).append(pick)
    contents: dict[str, TileContent] = {}
    for shard, shard_picks in sorted(by_shard.items()):
        tar_name = f"{shard}.tar"
        payloads = read_members(storage, tar_name, {p.key for p in shard_picks},
                                IMAGE_EXTENSIONS | {LANDMARKS_MEMBER}, 2)
        loaded = [_face_content(p, payloads.get(p.key, {}), tar_name) for p in shard_picks]
        if maps is not None:
            _attach_maps(storage, shard, loaded, maps)
        contents.update((c.pick.key, c) for c in loaded)
    return [contents[p.key] for p in picks]


# ------------------------------------------------------------------------------------------------ drawing


def fit_text(text: str, width: int, scale: float) -> str:
    """Shorten text in the middle ('ab..yz') until it fits `width` pixels; the end (the stem) matters most."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head = keep // 3
        candidate = text[:head] + ".." + text[len(text) - (keep - head):]
        if cv2.getTextSize(candidate, FONT, scale, 1)[0][0] <= width:
            return candidate
    return ""


def short_video_id(video_id: str) -> str:
    """dataset/method/compression/stem → method/stem: the dataset and compression are the same sheet-wide."""
    parts = video_id.split("/")
    return f"{parts[1]}/{parts[-1]}" if len(parts) >= 4 else "/".join(parts[-2:])


def caption_text(pick: Pick) -> tuple[str, str]:
    """The caption's two parts: the shortened video id and the frame (plus track when there are several)."""
    track = re.search(r"-t(\d+)$", pick.key)
    return short_video_id(pick.video_id), f"f{pick.frame}" + (f" t{track.group(1)}" if track else "")


def overlay_map(face: np.ndarray, region_map: np.ndarray) -> np.ndarray:
    """Blend the map's heat colours over the face where the map is non-zero; zero pixels stay untouched."""
    side = face.shape[0]
    resized = cv2.resize(region_map, (face.shape[1], side), interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap(resized, cv2.COLORMAP_JET)
    blended = cv2.addWeighted(face, 1 - MAP_ALPHA, heat, MAP_ALPHA, 0)
    return np.where((resized > 0)[..., None], blended, face)


def landmark_positions(landmarks: np.ndarray, crop_shape: tuple[int, ...], layout: TileLayout) -> np.ndarray:
    """Landmarks in crop pixels → integer tile pixels (pixel-centre scaling, as cv2.resize maps them)."""
    height, width = crop_shape[:2]
    side = layout.face_side
    x0, y0 = layout.face_origin
    scaled = (landmarks + 0.5) * np.array([side / width, side / height]) - 0.5
    return np.rint(scaled + np.array([x0, y0])).astype(int)


def draw_landmarks(tile: np.ndarray, positions: np.ndarray, layout: TileLayout) -> None:
    """Landmark dots, only those inside the face square (a point off the crop is not drawn over the caption)."""
    x0, y0 = layout.face_origin
    radius = max(1, layout.face_side // 100)
    for x, y in positions:
        if x0 <= x < x0 + layout.face_side and y0 <= y < y0 + layout.face_side:
            cv2.circle(tile, (int(x), int(y)), radius, LANDMARK_COLOUR, -1, cv2.LINE_8)


def draw_caption(tile: np.ndarray, pick: Pick, layout: TileLayout) -> None:
    """The caption strip under the face: video id on the left, frame on the right."""
    b, t, h = layout.border, layout.tile, layout.caption
    tile[t - b - h:t - b, b:t - b] = CAPTION_BACKGROUND
    scale = h / 36
    name, frame = caption_text(pick)
    frame_width = cv2.getTextSize(frame, FONT, scale, 1)[0][0]
    reserved = max(frame_width, cv2.getTextSize("f000", FONT, scale, 1)[0][0])  # same cut for f5 and f10
    baseline = t - b - max(2, (h - int(22 * scale)) // 2)
    room = t - 2 * b - reserved - 10
    cv2.putText(tile, fit_text(name, room, scale), (b + 3, baseline), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    cv2.putText(tile, frame, (t - b - 3 - frame_width, baseline), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)


def draw_tile(content: TileContent, layout: TileLayout) -> np.ndarray:
    """One tile: label border, face (with map heat), caption, landmark dots on top."""
    t, b, side = layout.tile, layout.border, layout.face_side
    tile = np.full((t, t, 3), BACKGROUND, np.uint8)
    colour = LABEL_COLOURS.get(content.pick.label, TEXT_COLOUR)
    tile[:b], tile[t - b:], tile[:, :b], tile[:, t - b:] = colour, colour, colour, colour
    face = cv2.resize(content.image, (side, side), interpolation=cv2.INTER_AREA)
    if content.region_map is not None:
        face = overlay_map(face, content.region_map)
    x0, y0 = layout.face_origin
    tile[y0:y0 + side, x0:x0 + side] = face
    draw_caption(tile, content.pick, layout)
    draw_landmarks(tile, landmark_positions(content.landmarks, content.image.shape, layout), layout)
    return tile


def _legend(bar: np.ndarray, maps: str | None, y: int) -> None:
    """Second title line: what the border colours, dots and heat colours mean."""
    x = 8
    for colour, label in ((REAL_COLOUR, "real"), (FAKE_COLOUR, "fake")):
        cv2.rectangle(bar, (x, y - 10), (x + 11, y + 1), colour, 2)
        cv2.putText(bar, label, (x + 16, y), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)
        x += 58
    cv2.circle(bar, (x + 5, y - 4), 2, LANDMARK_COLOUR, -1)
    cv2.putText(bar, "landmarks", (x + 14, y), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)
    x += 96
    if maps is not None and x + 60 < bar.shape[1]:
        ramp = cv2.applyColorMap(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (10, 1)), cv2.COLORMAP_JET)
        bar[y - 9:y + 1, x:x + 48] = ramp[:, : min(48, bar.shape[1] - x)]
        cv2.putText(bar, f"map {maps} 0..255", (x + 54, y), FONT, 0.4, TEXT_COLOUR, 1, cv2.LINE_AA)


def fit_parts(parts: list[str], width: int, scale: float) -> str:
    """Join title parts with ' | ', dropping the least important (last) ones before shortening any text."""
    while len(parts) > 1 and cv2.getTextSize(" | ".join(parts), FONT, scale, 1)[0][0] > width:
        parts = parts[:-1]
    return fit_text(" | ".join(parts), width, scale)


def title_bar(width: int, title_parts: list[str], maps: str | None) -> np.ndarray:
    """The strip above the grid: what this sheet shows, and the legend."""
    bar = np.full((TITLE_HEIGHT, width, 3), BACKGROUND, np.uint8)
    cv2.putText(bar, fit_parts(title_parts, width - 16, 0.5), (8, 18), FONT, 0.5, TEXT_COLOUR, 1, cv2.LINE_AA)
    _legend(bar, maps, 36)
    return bar


def default_columns(count: int) -> int:
    """A roughly 4:3 grid for `count` tiles."""
    return max(1, min(count, round(math.sqrt(count * 4 / 3))))


def out_name(storage: Storage) -> str:
    """The output's name for the title: its last two path parts (`runs/ffpp`, `bucket/celebdf`)."""
    return "/".join(storage.root.rstrip("/").split("/")[-2:])


def sheet_title(storage: Storage, picks: list[Pick], split: str | None, seed: int, video: str | None) -> list[str]:
    """First title line's parts, most important first: which output or video, how many faces, how picked."""
    if video is not None:
        first = picks[0]
        return [f"video {first.video_id}", f"{first.split}, {'fake' if first.label else 'real'}",
                f"{len(picks)} frames in time order", out_name(storage)]
    videos = len({p.video_id for p in picks})
    return [out_name(storage), f"split {split or 'all'}", f"n {len(picks)} from {videos} videos", f"seed {seed}"]


def make_sheet(out: str | Storage, n: int = 48, split: str | None = None, maps: str | None = None, seed: int = 0,
               video: str | None = None, cols: int | None = None, tile: int = 160) -> np.ndarray:
    """The contact sheet as a BGR image: title bar on top, then rows × cols tiles of `tile` pixels."""
    if tile < MIN_TILE:
        raise DfprepError(f"--tile must be at least {MIN_TILE} pixels")
    storage = as_storage(out)
    if maps is not None:
        check_map_set(storage, maps)
    picks = choose_samples(storage, n, split, seed, video)
    if not picks:
        raise DfprepError(f"no samples found for the sheet in {storage.root}")
    columns = cols if cols and cols > 0 else default_columns(len(picks))
    rows = -(-len(picks) // columns)
    layout = TileLayout(tile)
    grid = np.full((rows * tile, columns * tile, 3), BACKGROUND, np.uint8)
    for position, content in enumerate(load_tiles(storage, picks, maps)):
        row, column = divmod(position, columns)
        grid[row * tile:(row + 1) * tile, column * tile:(column + 1) * tile] = draw_tile(content, layout)
    return np.vstack([title_bar(grid.shape[1], sheet_title(storage, picks, split, seed, video), maps), grid])


def write_sheet(out: str | Storage, path: str | Path, **options: Any) -> tuple[int, int]:
    """Render the sheet and save it as PNG; returns its (height, width)."""
    sheet = make_sheet(out, **options)
    ok, encoded = cv2.imencode(".png", sheet)
    if not ok:
        raise DfprepError(f"cannot encode the sheet for {path}")
    Path(path).write_bytes(encoded.tobytes())
    return sheet.shape[0], sheet.shape[1]
