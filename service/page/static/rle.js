// COCO RLE in the browser: decode the compressed counts, paint every segment into one map,
// and turn that map into overlay pixels. Typed arrays and one pass over the frame each, so a
// 3840x2160 answer decodes and draws in a few tens of milliseconds.

// The overlay palette: segment id -> PALETTE[(id - 1) % 20]. The same list as
// maskserve.service.overlay.PALETTE (a test keeps them equal).
export const PALETTE = [
  "e6194b", "3cb44b", "ffe119", "4363d8", "f58231", "911eb4", "46f0f0", "f032e6", "bcf60c", "fabebe",
  "008080", "e6beff", "9a6324", "fffac8", "800000", "aaffc3", "808000", "ffd8b1", "000075", "808080",
];

export function colour(id) {
  const code = PALETTE[(id - 1) % PALETTE.length];
  return [parseInt(code.slice(0, 2), 16), parseInt(code.slice(2, 4), 16), parseInt(code.slice(4, 6), 16)];
}

// The run lengths of a COCO compressed RLE string (pycocotools' rleFrString): little-endian
// base-32 digits as chr(48 + digit), 0x20 = more digits follow, 0x10 in the last digit = negative;
// from the fourth count on, each is stored as the difference from the count two before it.
export function decodeCounts(text) {
  const counts = new Uint32Array(text.length);
  let m = 0;
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10) !== 0) x |= -1 << (5 * k);
    }
    if (m > 2) x += counts[m - 2];
    counts[m] = x;
    m += 1;
  }
  return counts.subarray(0, m);
}

// One binary mask, (height * width) bytes in row-major order: for tests and downloads.
export function decodeMask(rle) {
  const [height, width] = rle.size;
  const columns = new Uint8Array(height * width);
  const counts = decodeCounts(rle.counts);
  let position = 0;
  for (let i = 0; i < counts.length; i += 1) {
    if (i % 2 === 1) columns.fill(1, position, position + counts[i]);
    position += counts[i];
  }
  return transpose(columns, height, width);
}

// Every segment's number (its index in `segments` + 1) per pixel, row-major, 0 where none.
// Segments are painted lowest score first, so that the best of overlapping instances wins (as
// the server's label maps do). Runs are filled column-major (COCO's order) with typed-array
// fill, then the map is transposed once.
export function paintSegments(segments, height, width) {
  const columns = new Uint16Array(height * width);
  const order = segments.map((segment, index) => index);
  const score = (i) => (segments[i].score === null ? -1 : segments[i].score);
  order.sort((a, b) => score(a) - score(b) || a - b);
  for (const index of order) {
    const counts = decodeCounts(segments[index].rle.counts);
    let position = 0;
    for (let i = 0; i < counts.length; i += 1) {
      if (i % 2 === 1) columns.fill(index + 1, position, position + counts[i]);
      position += counts[i];
    }
  }
  return transpose(columns, height, width);
}

function transpose(columns, height, width) {
  const rows = new columns.constructor(height * width);
  for (let x = 0; x < width; x += 1) {
    const column = x * height;
    for (let y = 0, i = x; y < height; y += 1, i += width) rows[i] = columns[column + y];
  }
  return rows;
}

// RGBA overlay pixels for `map` (from paintSegments): each visible segment tinted with its
// colour at `opacity`, its outline (a pixel whose right or lower neighbour differs) opaque.
export function overlayPixels(map, height, width, segments, visible, opacity, out) {
  const fill = new Uint32Array(segments.length + 1);
  const edge = new Uint32Array(segments.length + 1);
  const alpha = Math.round(opacity * 255);
  segments.forEach((segment, index) => {
    if (!visible.has(segment.id)) return;
    const [r, g, b] = colour(segment.id);
    fill[index + 1] = ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA
    edge[index + 1] = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  });
  const pixels = new Uint32Array(out.buffer, out.byteOffset, height * width);
  for (let y = 0, i = 0; y < height; y += 1) {
    const lastRow = y === height - 1;
    for (let x = 0; x < width; x += 1, i += 1) {
      const k = map[i];
      if (k === 0) {
        pixels[i] = 0;
      } else if ((x < width - 1 && map[i + 1] !== k) || (!lastRow && map[i + width] !== k)) {
        pixels[i] = edge[k];
      } else {
        pixels[i] = fill[k];
      }
    }
  }
}

// Where each segment's label goes, by segment number - 1 (null when it has no visible pixel):
// the middle of its longest horizontal run in `map`, ties going to the row nearest its
// centroid (maskserve.service.overlay.label_point follows the same rule).
export function labelPoints(map, height, width, count) {
  const rows = new Float64Array(count + 1);
  const n = new Float64Array(count + 1);
  for (let y = 0, i = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1, i += 1) {
      rows[map[i]] += y;
      n[map[i]] += 1;
    }
  }
  const best = new Float64Array(count + 1);
  const bestDistance = new Float64Array(count + 1).fill(Infinity);
  const points = new Array(count + 1).fill(null);
  for (let y = 0, i = 0; y < height; y += 1) {
    let x = 0;
    while (x < width) {
      const k = map[i];
      let end = x + 1;
      while (end < width && map[i + end - x] === k) end += 1;
      if (k !== 0) {
        const length = end - x;
        const distance = Math.abs(y - rows[k] / n[k]);
        if (length > best[k] || (length === best[k] && distance < bestDistance[k])) {
          best[k] = length;
          bestDistance[k] = distance;
          points[k] = { x: (x + end) / 2, y: y + 0.5 };
        }
      }
      i += end - x;
      x = end;
    }
  }
  return points.slice(1);
}
