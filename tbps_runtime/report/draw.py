"""Results people can look at: a PNG grid and an HTML page of ranked crops, with attention maps.

Pillow only (no matplotlib: this is the runtime). Each query is one row: the
query's text, then its top-k crops with rank and score; when the identities of
the query and of the gallery rows are known, hits are framed green and misses
red (grey when unknown), as in the paper's Fig. 3.

With an :class:`~tbps_runtime.model.attention.Explanation` (from
:meth:`~tbps_runtime.search.PersonSearch.explain`: the bundle's
``*.explain.onnx`` graphs, ``tbps export --explain``), each crop gets the image
tower's averaged decoder attention A_avg as a heat map (Fig. 4a), and the
query's tokens are shaded by the text tower's decoder attention (Fig. 4b).

The HTML page is one self-contained file: crops are embedded as base64 PNG data
URIs, and every string it prints goes through :func:`html.escape`.

A crop that cannot be read (moved, deleted) is drawn as a grey box, and the
report says so in one warning (:func:`warn_missing`). A query whose answer is
empty can carry a note saying why (the threshold and the best score below it).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import DataError, InputFileNotFoundError
from tbps_runtime.model.images import read_image, resize_rgb
from tbps_runtime.paths import one_line
from tbps_runtime.paths import printable

if TYPE_CHECKING:
    from tbps_runtime.model.attention import Explanation
    from tbps_runtime.search import Match

logger = logging.getLogger(__name__)

HIT, MISS, UNKNOWN = (40, 170, 60), (215, 40, 40), (150, 150, 150)
CROP_SIZE = (240, 96)  # (H, W) of a drawn crop: small crops are upscaled (bilinear)
TEXT_WIDTH = 300  # the query column, px
NOTE_WIDTH = 420  # at least this much room, px, for the line saying why an answer is empty
_SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"}


# ---- drawing -----------------------------------------------------------------

def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (…, 3) uint8 RGB on a blue-yellow-red ramp."""
    stops = np.array([[20, 30, 140], [40, 160, 220], [250, 230, 60], [230, 40, 20]], np.float32)
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    t = (position - low)[..., None]
    return (stops[low] * (1 - t) + stops[low + 1] * t).astype(np.uint8)


def crop_image(path: str | Path | None, size: tuple[int, int] = CROP_SIZE, heatmap: np.ndarray | None = None,
               alpha: float = 0.5, missing: list[str] | None = None) -> Image.Image:
    """A gallery crop at ``size`` (H, W), with ``heatmap`` (h, w) blended over it when given.
    An unreadable image gives a grey placeholder, and its path is appended to ``missing`` when given."""
    try:
        pixels = resize_rgb(read_image(path), size).astype(np.float32)  # (H, W, 3)
    except (DataError, InputFileNotFoundError, TypeError, OSError):
        pixels = np.full((*size, 3), 200, np.float32)
        if missing is not None:
            missing.append(str(path))
    if heatmap is not None and heatmap.size:
        scaled = heatmap / max(float(heatmap.max()), 1e-12)  # to [0, 1] by the image's maximum, as Eq. 5
        up = Image.fromarray((scaled * 255).astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = (1 - alpha) * pixels + alpha * _heat_colours(np.asarray(up, np.float32) / 255)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def warn_missing(crops: Sequence[str], videos: Sequence[str] = ()) -> None:
    """One warning for a report's unreadable ``crops`` (drawn grey) and missing source ``videos`` (hits
    without a link to play): how many, and the first; nothing when all were there."""
    said = []
    for paths, what in ((crops, "crop(s) could not be read and are drawn as grey boxes"),
                        (videos, "source video(s) are missing and their hits have no link")):
        unique = list(dict.fromkeys(paths))  # a crop shown for several queries counts once
        if unique:
            said.append(f"{len(unique)} {what} (first: {one_line(printable(unique[0]))})")
    if said:
        logger.warning("the report is incomplete: %s; were the files moved or deleted after indexing?",
                       "; ".join(said))


def frame_colour(match: Match, query_identity: Any) -> tuple[int, int, int]:
    """Green for a hit, red for a miss, grey when either identity is unknown."""
    if query_identity is None or match.identity is None:
        return UNKNOWN
    return HIT if str(match.identity) == str(query_identity) else MISS


def _shade(weight: float) -> tuple[int, int, int]:
    """White -> orange-red for a weight in [0, 1]."""
    w = float(np.clip(weight, 0, 1))
    return int(255 - 20 * w), int(255 - 150 * w), int(255 - 210 * w)


def _display_tokens(explanation: Explanation) -> list[tuple[str, float]]:
    """The query's tokens (special ones left out) with the mean attention of all decoder tokens, scaled to [0, 1]."""
    weights = explanation.token_weights.mean(axis=0)
    keep = [i for i, t in enumerate(explanation.tokens) if t not in _SPECIAL]
    top = max((float(weights[i]) for i in keep), default=1.0) or 1.0
    return [(explanation.tokens[i], float(weights[i]) / top) for i in keep]


def _draw_tokens(draw: ImageDraw.ImageDraw, tokens: list[tuple[str, float]], font: Any, x0: int, y: int,
                 width: int, line_height: int) -> int:
    x = x0
    for token, weight in tokens:
        text = token[2:] if token.startswith("##") else token
        if token.startswith("##") and x > x0:
            x -= 4  # a word piece continues the word before it
        w = int(draw.textlength(text, font=font)) + 6
        if x + w > x0 + width and x > x0:
            x, y = x0, y + line_height
        draw.rectangle([x, y, x + w - 2, y + line_height - 3], fill=_shade(weight))
        draw.text((x + 2, y + 1), text, fill=(0, 0, 0), font=font)
        x += w
    return y + line_height


def draw_results(queries: Sequence[str], results: Sequence[Sequence[Match]], output: str | Path, *,
                 query_identities: Sequence[Any] | None = None,
                 explanations: Sequence[Explanation] | None = None, crop_size: tuple[int, int] = CROP_SIZE,
                 notes: Sequence[str | None] | None = None, missing: list[str] | None = None) -> Path:
    """Write the results grid PNG: one row per query (its text, then its crops). Returns ``output``.

    ``notes``: per query, a line drawn where its crops go (why its answer is empty), or None.
    ``missing``: collects the unreadable crops for the caller to warn about once (:func:`warn_missing`);
    without it, this picture warns itself."""
    unread: list[str] = [] if missing is None else missing
    k = max((len(r) for r in results), default=0)
    pad, frame, label = 12, 5, 40
    cell_w, row_h = crop_size[1] + 2 * frame + pad, crop_size[0] + 2 * frame + label + pad
    width = pad + TEXT_WIDTH + pad + max(k, 1) * cell_w
    if notes and any(notes):
        width = max(width, pad + TEXT_WIDTH + pad + NOTE_WIDTH + pad)
    canvas = Image.new("RGB", (width, pad + len(queries) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    big, small = _font(17), _font(14)
    if any(getattr(m, "detail", None) for r in results for m in r):  # camera and time under each crop
        label += 34
        row_h += 34
        canvas = Image.new("RGB", (width, pad + len(queries) * row_h), "white")
        draw = ImageDraw.Draw(canvas)
    for row, (query, matches) in enumerate(zip(queries, results)):
        y = pad + row * row_h
        if row:
            draw.line([pad, y - pad // 2, width - pad, y - pad // 2], fill=(225, 225, 225), width=1)
        explanation = explanations[row] if explanations else None
        identity = query_identities[row] if query_identities else None
        _draw_query(draw, query, identity, explanation, pad, y, big, small)
        heatmaps = explanation.heatmaps if explanation is not None else None
        note = notes[row] if notes else None
        if note:  # an empty answer says why where its crops would be
            for line, text in enumerate(_wrap(draw, printable(note), small, width - 3 * pad - TEXT_WIDTH)[:12]):
                draw.text((pad + TEXT_WIDTH + pad, y + 20 + 18 * line), text, fill=(110, 110, 110), font=small)
        for i, match in enumerate(matches):
            x = pad + TEXT_WIDTH + pad + i * cell_w
            draw.rectangle([x, y, x + crop_size[1] + 2 * frame - 1, y + crop_size[0] + 2 * frame - 1],
                           fill=frame_colour(match, identity))
            canvas.paste(crop_image(match.path, crop_size, None if heatmaps is None else heatmaps[i], missing=unread),
                         (x + frame, y + frame))
            ty = y + crop_size[0] + 2 * frame + 3
            draw.text((x, ty), f"#{match.rank}", fill=(0, 0, 0), font=big)
            draw.text((x, ty + 19), f"{match.score:.3f}", fill=(90, 90, 90), font=small)
            for line, text in enumerate(str(getattr(match, "detail", "") or "").split("\n")[:2]):
                draw.text((x, ty + 37 + 16 * line), printable(text)[:16], fill=(90, 90, 90), font=small)
    output = Path(output)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write(output, lambda stream: stream.write(buffer.getvalue()))
    if missing is None:
        warn_missing(unread)
    return output


def _draw_query(draw: ImageDraw.ImageDraw, query: str, identity: Any, explanation: Explanation | None,
                x: int, y: int, big: Any, small: Any) -> None:
    header = "query" if identity is None else f"query (person {identity})"
    draw.text((x, y), header, fill=(110, 110, 110), font=small)
    y += 20
    if explanation is None:
        for line in _wrap(draw, query, big, TEXT_WIDTH)[:9]:
            draw.text((x, y), line, fill=(0, 0, 0), font=big)
            y += 22
        return
    y = _draw_tokens(draw, _display_tokens(explanation), big, x, y, TEXT_WIDTH, 24)
    draw.text((x, y + 4), "tokens shaded by text attention", fill=(110, 110, 110), font=small)
    draw.text((x, y + 22), "crops: image attention A_avg", fill=(110, 110, 110), font=small)


# ---- HTML --------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:24px;color:#222}
section{border-bottom:1px solid #ddd}.row{display:flex;gap:18px;align-items:flex-start;padding:14px 0}
.query{width:300px;flex:none}.query p{font-size:17px;margin:4px 0}.meta{color:#777;font-size:13px}
figure{margin:0;text-align:center;font-size:13px}figure img{border:5px solid #999;display:block;image-rendering:auto}
figure.hit img{border-color:#28aa3c}figure.miss img{border-color:#d72828}
.tok{padding:1px 2px;margin:1px;display:inline-block;border-radius:2px}.piece{margin-left:-3px}
details.att{padding:6px 0 12px}table.att{border-collapse:collapse;font-size:12px;margin-top:6px}
table.att td{padding:0 4px}figure img.more{border-width:2px;display:inline-block;margin:2px}"""


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tokens_html(tokens: list[tuple[str, float]]) -> str:
    """Tokens as spans shaded by their weight in [0, 1] (word pieces ``##x`` joined to the word before)."""
    return "".join(f'<span class="tok{" piece" if t.startswith("##") else ""}" style="background:rgb{_shade(w)}" '
                   f'title="{w:.2f}">{html.escape(t[2:] if t.startswith("##") else t)}</span>' for t, w in tokens)


def _attention_table(explanation: Explanation, num_coarse: int) -> str:
    """Fig. 4b: one line per decoder token, the query's tokens shaded by its attention."""
    rows = []
    for r, weights in enumerate(explanation.token_weights):
        name = f"shared {r + 1}" if r < num_coarse else f"fine {r - num_coarse + 1}"
        top = float(weights.max()) or 1.0
        cells = [(t, float(w) / top) for t, w in zip(explanation.tokens, weights)]
        rows.append(f'<tr><td class="meta">{html.escape(name)}</td><td>{_tokens_html(cells)}</td></tr>')
    return f'<table class="att">{"".join(rows)}</table>'


def write_html(queries: Sequence[str], results: Sequence[Sequence[Match]], output: str | Path, *,
               query_identities: Sequence[Any] | None = None, explanations: Sequence[Explanation] | None = None,
               title: str = "tbps results", crop_size: tuple[int, int] = CROP_SIZE,
               notes: Sequence[str | None] | None = None, missing: list[str] | None = None) -> Path:
    """Write a self-contained HTML page of the results (crops as base64 data URIs). Returns ``output``.

    ``notes`` and ``missing``: as :func:`draw_results`."""
    unread: list[str] = [] if missing is None else missing
    body = []
    for row, (query, matches) in enumerate(zip(queries, results)):
        identity = query_identities[row] if query_identities else None
        explanation = explanations[row] if explanations else None
        meta = "query" if identity is None else f"query · person {identity}"
        text = f"<p>{html.escape(query)}</p>"
        if explanation is not None:  # Fig. 4b: the words shaded by the text attention, then per decoder token
            text += (f'<div class="meta">text attention (mean over the decoder tokens)</div>'
                     f"<p>{_tokens_html(_display_tokens(explanation))}</p>")
        figures = []
        for i, match in enumerate(matches):
            colour = frame_colour(match, identity)
            css = "hit" if colour == HIT else "miss" if colour == MISS else "unknown"
            heat = None if explanation is None else explanation.heatmaps[i]
            src = _data_uri(crop_image(match.path, crop_size, heat, missing=unread))
            caption = f"#{match.rank} · {match.score:.3f}"
            detail = getattr(match, "detail", None)
            if detail:  # camera · time · track of a store's row
                caption += "\n" + detail
            image = (f'<img src="{src}" alt="{html.escape(printable(str(match.path)))}" '
                     f'title="{html.escape(printable(str(match.path)))}">')
            link = getattr(match, "link", None)
            if link:  # the source video at that moment
                image = f'<a href="{html.escape(link)}" title="play the source at this moment">{image}</a>'
            small = (crop_size[0] // 3, crop_size[1] // 3)
            extra = "".join(f'<img class="more" src="{_data_uri(crop_image(path, small, missing=unread))}" '
                            f'alt="another crop of the track">' for path in getattr(match, "extra_paths", ()) or ())
            caption_html = "<br>".join(html.escape(line) for line in caption.split("\n"))
            figures.append(f'<figure class="{css}">{image}<figcaption>{caption_html}</figcaption>'
                           + (f'<div class="track">{extra}</div>' if extra else "") + "</figure>")
        note = notes[row] if notes else None
        if note:  # an empty answer says why
            figures.append(f'<p class="meta empty">{html.escape(note)}</p>')
        table = ("" if explanation is None else '<details class="att"><summary class="meta">text attention per '
                 f"decoder token</summary>{_attention_table(explanation, explanation.maps.shape[1])}</details>")
        body.append(f'<section><div class="row"><div class="query"><div class="meta">{html.escape(meta)}</div>'
                    f'{text}</div>{"".join(figures)}</div>{table}</section>')
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")
    output = Path(output)
    atomic_write(output, lambda stream: stream.write(printable(page).encode("utf-8")))
    if missing is None:
        warn_missing(unread)
    return output
