// onnxcam graphs in JavaScript, for Node.js and the browser alike (no dependencies):
// the graph's onnxcam.* metadata, the runtime's preprocessing of a photo and its colormaps.
//
// - modelMetadata(bytes): the ModelProto's metadata_props; onnxruntime's JS packages do not expose
//   custom metadata, so the protobuf is walked here (field 14: StringStringEntryProto {1: key, 2: value}).
// - graphInfo(meta, session): image input, input size, resize, labels and baked method of a
//   --raw-input --heatmap graph (or why the graph is not one).
// - modelPixels(rgb, width, height, preprocess): onnxcam.runtime.images.image_pixels — the short side
//   resized to preprocess.resize with Pillow's BILINEAR (its antialiased triangle filter in 22-bit
//   fixed point, horizontal pass then vertical), then torchvision's centre crop (zero padding).
// - heatmapToPhoto(heatmap, geometry, h, w): runtime.images.heatmap_to_original.
// - TURBO / colorize / overlayPixels: onnxcam.runtime.colormap's turbo LUT and its 50 % overlay.

// ---- metadata
function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated protobuf varint');
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

function* protoFields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      [, pos] = readVarint(buf, pos);
      yield { field, wire };
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > end) throw new Error('truncated protobuf field');
      yield { field, wire, start: pos, end: pos + len };
      pos += len;
    } else if (wire === 5) {
      pos += 4;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

/** The metadata_props of an ONNX ModelProto (Uint8Array) as {key: value}. */
export function modelMetadata(bytes) {
  const text = new TextDecoder();
  const meta = {};
  for (const f of protoFields(bytes)) {
    if (f.field !== 14 || f.wire !== 2) continue;
    let key = '';
    let value = '';
    for (const g of protoFields(bytes, f.start, f.end)) {
      if (g.wire !== 2) continue;
      if (g.field === 1) key = text.decode(bytes.subarray(g.start, g.end));
      else if (g.field === 2) value = text.decode(bytes.subarray(g.start, g.end));
    }
    meta[key] = value;
  }
  return meta;
}

function parseJson(meta, key, fallback) {
  if (!meta[key]) return fallback;
  try {
    return JSON.parse(meta[key]);
  } catch {
    throw new Error(`its ${key} metadata is not JSON`);
  }
}

/**
 * What a --raw-input --heatmap graph needs of its session and metadata: {imageInput, H, W,
 * preprocess, labels, method}; throws an Error saying how to export one otherwise.
 */
export function graphInfo(meta, session) {
  const imageInput = meta['onnxcam.image_input'] || session.inputNames.find((n) => n !== 'class_index');
  const inMeta = (session.inputMetadata || []).find((m) => m.name === imageInput);
  const uint8 = inMeta ? inMeta.type === 'uint8' : true; // onnxruntime-web < 1.22 has no inputMetadata
  if (!session.outputNames.includes('heatmap') || !imageInput || !uint8) {
    throw new Error('needs a graph exported with `onnxcam export ... --raw-input --heatmap gradcam` '
                    + '(uint8 pixel input and a heatmap output)');
  }
  const preprocess = parseJson(meta, 'onnxcam.preprocess', {});
  const [H, W] = preprocess.size || (inMeta && inMeta.shape ? inMeta.shape.slice(1, 3) : []);
  if (!Number.isInteger(H) || !Number.isInteger(W)) throw new Error("cannot tell the model's input size");
  const labels = parseJson(meta, 'onnxcam.labels', null);
  return { imageInput, H, W, preprocess, labels, method: meta['onnxcam.heatmap_method'] || null };
}

// ---- preprocessing (onnxcam.runtime.images)
// Python's round(): half to even.
function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** torchvision's CenterCrop offset (negative = zero padding when the image is too small). */
export function cropOffset(have, want) {
  return have >= want ? roundHalfEven((have - want) / 2) : -Math.floor((want - have) / 2);
}

/** Where the model input sits in a width × height photo (runtime.images.Geometry, as plain arrays). */
export function geometry(width, height, preprocess) {
  const [H, W] = preprocess.size;
  let wr = W;
  let hr = H;
  if (preprocess.resize) { // torchvision Resize(int): the short side to resize, the long one floored
    const { resize } = preprocess;
    const [short, long] = width <= height ? [width, height] : [height, width];
    const newLong = Math.floor((resize * long) / short);
    [wr, hr] = width <= height ? [resize, newLong] : [newLong, resize];
  }
  return { originalSize: [height, width], resizedSize: [hr, wr], cropOffset: [cropOffset(hr, H), cropOffset(wr, W)],
           inputSize: [H, W] };
}

const PRECISION_BITS = 22; // Pillow's 8-bit resampling precision (32 - 8 - 2)

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) / filterScale);
      k[x] = t < 1 ? 1 - t : 0;
      ww += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(sum) {
  const v = Math.floor(sum / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function resizeHorizontal(src, width, height, outWidth) {
  const { ksize, bounds, kk } = coefficients(width, outWidth);
  const out = new Uint8Array(outWidth * height * 3);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = bounds[2 * xx];
      const xmax = bounds[2 * xx + 1];
      for (let c = 0; c < 3; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += src[3 * (y * width + x + xmin) + c] * kk[xx * ksize + x];
        out[3 * (y * outWidth + xx) + c] = clip8(ss);
      }
    }
  }
  return out;
}

function resizeVertical(src, width, height, outHeight) {
  const { ksize, bounds, kk } = coefficients(height, outHeight);
  const out = new Uint8Array(width * outHeight * 3);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[2 * yy];
    const ymax = bounds[2 * yy + 1];
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += src[3 * ((y + ymin) * width + x) + c] * kk[yy * ksize + y];
        out[3 * (yy * width + x) + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** RGB bytes (width × height × 3) resized to outWidth × outHeight as Pillow's Image.resize(BILINEAR). */
export function resizeBilinear(rgb, width, height, outWidth, outHeight) {
  let out = rgb;
  if (outWidth !== width) out = resizeHorizontal(out, width, height, outWidth);
  if (outHeight !== height) out = resizeVertical(out, outWidth, height, outHeight);
  return out;
}

/** onnxcam.runtime.images.image_pixels: the uint8 RGB pixels [H, W, 3] a raw-input graph takes, and the geometry. */
export function modelPixels(rgb, width, height, preprocess) {
  const geo = geometry(width, height, preprocess);
  const [hr, wr] = geo.resizedSize;
  const [top, left] = geo.cropOffset;
  const [H, W] = geo.inputSize;
  const resized = hr === height && wr === width ? rgb : resizeBilinear(rgb, width, height, wr, hr);
  if (top === 0 && left === 0 && H === hr && W === wr) return { pixels: resized, geometry: geo };
  const pixels = new Uint8Array(H * W * 3); // zero where the crop overhangs
  for (let y = 0; y < H; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= hr) continue;
    for (let x = 0; x < W; x++) {
      const sx = x + left;
      if (sx < 0 || sx >= wr) continue;
      for (let c = 0; c < 3; c++) pixels[3 * (y * W + x) + c] = resized[3 * (sy * wr + sx) + c];
    }
  }
  return { pixels, geometry: geo };
}

/** RGBA bytes → RGB with transparency composited on white (as onnxcam's Python loader does). */
export function rgbOnWhite(rgba, count) {
  const rgb = new Uint8Array(count * 3);
  for (let i = 0; i < count; i++) {
    const a = rgba[4 * i + 3];
    for (let c = 0; c < 3; c++) {
      const v = rgba[4 * i + c];
      rgb[3 * i + c] = a === 255 ? v : Math.round((v * a + 255 * (255 - a)) / 255);
    }
  }
  return rgb;
}

// ---- heatmaps onto the photo (onnxcam.runtime.images.heatmap_to_original)
// cv2's INTER_LINEAR taps (half-pixel centres, border replicate, no antialiasing): runtime.resize.
function halfPixelTaps(src, dst) {
  const taps = [];
  for (let d = 0; d < dst; d++) {
    const s = ((d + 0.5) * src) / dst - 0.5;
    let s0 = Math.floor(s);
    let f = s - s0;
    if (s0 < 0) [s0, f] = [0, 0];
    if (s0 >= src - 1) [s0, f] = [src - 1, 0];
    taps.push([s0, Math.min(s0 + 1, src - 1), f]);
  }
  return taps;
}

/**
 * A heatmap [H, W] (Float32Array) at model input resolution onto the photo shown at outH × outW:
 * placed at the crop offset in a zero canvas of the resized size, then resized bilinearly.
 */
export function heatmapToPhoto(heatmap, geo, outH, outW) {
  const [hr, wr] = geo.resizedSize;
  const [top, left] = geo.cropOffset;
  const [H, W] = geo.inputSize;
  const canvas = new Float32Array(hr * wr);
  for (let y = Math.max(top, 0); y < Math.min(top + H, hr); y++) {
    for (let x = Math.max(left, 0); x < Math.min(left + W, wr); x++) canvas[y * wr + x] = heatmap[(y - top) * W + x - left];
  }
  const rows = halfPixelTaps(hr, outH);
  const cols = halfPixelTaps(wr, outW);
  const tmp = new Float32Array(outH * wr);
  rows.forEach(([a, b, f], y) => {
    for (let x = 0; x < wr; x++) tmp[y * wr + x] = (1 - f) * canvas[a * wr + x] + f * canvas[b * wr + x];
  });
  const out = new Float32Array(outH * outW);
  for (let y = 0; y < outH; y++) {
    cols.forEach(([a, b, f], x) => { out[y * outW + x] = (1 - f) * tmp[y * wr + a] + f * tmp[y * wr + b]; });
  }
  return out;
}

// ---- colormaps (onnxcam.runtime.colormap)
const TURBO_HEX = '30123b32154333184a341b51351e5836215f37246638276d392a733a2d793b2f803c32863d358b3e38913f3b973f3e9c4040a24143a74146ac4249b1424bb5434eba4451bf4454c34456c74559cb455ccf455ed34661d64664da4666dd4669e0466be3476ee64771e94773eb4776ee4778f0477bf2467df44680f64682f84685fa4687fb458afc458cfd448ffe4391fe4294ff4196ff4099ff3e9bfe3d9efe3ba0fd3aa3fc38a5fb37a8fa35abf833adf731aff52fb2f42eb4f22cb7f02ab9ee28bceb27bee925c0e723c3e422c5e220c7df1fc9dd1ecbda1ccdd81bd0d51ad2d21ad4d019d5cd18d7ca18d9c818dbc518ddc218dec018e0bd19e2bb19e3b91ae4b61ce6b41de7b21fe9af20eaac22ebaa25eca727eea42aefa12cf09e2ff19b32f29835f39438f4913cf58e3ff68a43f78746f8844af8804ef97d52fa7a55fa7659fb735dfc6f61fc6c65fd6969fd666dfe6271fe5f75fe5c79fe597dff5680ff5384ff5188ff4e8bff4b8fff4992ff4796fe4499fe429cfe409ffd3fa1fd3da4fc3ca7fc3aa9fb39acfb38affa37b1f936b4f836b7f735b9f635bcf534bef434c1f334c3f134c6f034c8ef34cbed34cdec34d0ea34d2e935d4e735d7e535d9e436dbe236dde037dfdf37e1dd37e3db38e5d938e7d739e9d539ebd339ecd13aeecf3aefcd3af1cb3af2c93af4c73af5c53af6c33af7c13af8be39f9bc39faba39fbb838fbb637fcb336fcb136fdae35fdac34fea933fea732fea431fea130fe9e2ffe9b2dfe992cfe962bfe932afe9029fd8d27fd8a26fc8725fc8423fb8122fb7e21fa7b1ff9781ef9751df8721cf76f1af66c19f56918f46617f36315f26014f15d13f05b12ef5811ed5510ec530feb500eea4e0de84b0ce7490ce5470be4450ae2430ae14109df3f08dd3d08dc3b07da3907d83706d63506d43305d23105d02f05ce2d04cc2b04ca2a04c82803c52603c32503c12302be2102bc2002b91e02b71d02b41b01b21a01af1801ac1701a91601a71401a41301a112019e10019b0f01980e01950d01920b018e0a018b09028808028507028106027e05027a0403';

/** Turbo as 256 × [r, g, b] bytes (entry i is the colour of t = i / 255), the Python runtime's default. */
export const TURBO = Uint8Array.from(TURBO_HEX.match(/../g), (h) => parseInt(h, 16));

/** The colour of heatmap value v in [0, 1]: TURBO[round(255 · clip(v, 0, 1))]. */
export function colorize(v) {
  const i = Math.round(255 * Math.min(Math.max(Number.isFinite(v) ? v : 0, 0), 1)) * 3;
  return [TURBO[i], TURBO[i + 1], TURBO[i + 2]];
}

/** (1 − α)·photo + α·colormap(heatmap), rounded: runtime.colormap.overlay on same-sized RGB bytes. */
export function overlayPixels(rgb, heatmap, alpha = 0.5) {
  const out = new Uint8Array(rgb.length);
  for (let i = 0; i < heatmap.length; i++) {
    const color = colorize(heatmap[i]);
    for (let c = 0; c < 3; c++) out[3 * i + c] = Math.round((1 - alpha) * rgb[3 * i + c] + alpha * color[c]);
  }
  return out;
}

/** The indices of the k largest values, largest first. */
export function topK(values, k) {
  return Array.from(values.keys()).sort((a, b) => values[b] - values[a] || a - b).slice(0, k);
}

/** Softmax of logits (a numerically safe one). */
export function softmax(logits) {
  const m = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}
