#!/usr/bin/env node
// Explain one PNG with an onnxcam graph exported with `--raw-input --heatmap METHOD`, in Node.js
// with onnxruntime-node only (no Python, no PyTorch):
//
//   node explain.mjs MODEL.cam.onnx IMAGE.png OUT_PREFIX [--class N]
//
// The graph takes uint8 RGB pixels [N, H, W, 3] at the model's input size plus `class_index`
// (int64 [N], -1 = the top-1 class) and returns `heatmap` [N, H, W] in [0, 1], `logits`, `target`.
// Writes OUT_PREFIX.heatmap.png (jet colormap), OUT_PREFIX.overlay.png (heatmap over the image)
// and OUT_PREFIX.heatmap.json (the float heatmap, target class, logits).
//
// Images whose size differs from the model's are resized (short side to the metadata's `resize`,
// bilinear with half-pixel centres, no antialiasing) and centre-cropped here. That is close to but
// not bit-identical with onnxcam's Python preprocessing (Pillow); feed an image already at the
// model size for exact parity.
import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';

import ort from 'onnxruntime-node';
import pngjs from 'pngjs';

const { PNG } = pngjs;

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error('usage: node explain.mjs MODEL.cam.onnx IMAGE.png OUT_PREFIX [--class N]');
  process.exit(2);
}

function die(message) { // one line on stderr, exit 2 (unreadable or unsupported input)
  console.error(`error: ${message}`);
  process.exit(2);
}

// ---- onnxcam.* metadata: onnxruntime-node does not expose custom metadata, so read the ModelProto's
// metadata_props (field 14: StringStringEntryProto {1: key, 2: value}) with a minimal protobuf walk.
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
      yield { field, wire, start: pos, end: pos + len };
      pos += len;
    } else if (wire === 5) {
      pos += 4;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

function modelMetadata(bytes) {
  const meta = {};
  for (const f of protoFields(bytes)) {
    if (f.field !== 14 || f.wire !== 2) continue;
    let key = '';
    let value = '';
    for (const g of protoFields(bytes, f.start, f.end)) {
      if (g.wire !== 2) continue;
      const text = bytes.toString('utf8', g.start, g.end);
      if (g.field === 1) key = text;
      else if (g.field === 2) value = text;
    }
    meta[key] = value;
  }
  return meta;
}

// ---- images
function readPng(file) {
  const png = PNG.sync.read(fs.readFileSync(file)); // RGBA, 8 bits per channel (16-bit scaled down)
  const { width, height, data } = png;
  const rgb = new Uint8Array(width * height * 3);
  // Transparency is composited on white, as onnxcam's Python loader does.
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    const a = data[j + 3];
    for (let c = 0; c < 3; c++) rgb[3 * i + c] = a === 255 ? data[j + c] : Math.round((data[j + c] * a + 255 * (255 - a)) / 255);
  }
  return { width, height, rgb };
}

function resizeBilinear(img, w, h) {
  const out = new Uint8Array(w * h * 3);
  const sx = img.width / w;
  const sy = img.height / h;
  for (let y = 0; y < h; y++) {
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), img.height - 1);
    const y0 = Math.floor(fy);
    const y1 = Math.min(y0 + 1, img.height - 1);
    const wy = fy - y0;
    for (let x = 0; x < w; x++) {
      const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), img.width - 1);
      const x0 = Math.floor(fx);
      const x1 = Math.min(x0 + 1, img.width - 1);
      const wx = fx - x0;
      for (let c = 0; c < 3; c++) {
        const p = (yy, xx) => img.rgb[3 * (yy * img.width + xx) + c];
        const v = (1 - wy) * ((1 - wx) * p(y0, x0) + wx * p(y0, x1)) + wy * ((1 - wx) * p(y1, x0) + wx * p(y1, x1));
        out[3 * (y * w + x) + c] = Math.round(v);
      }
    }
  }
  return { width: w, height: h, rgb: out };
}

// torchvision's CenterCrop offset (Python's round-half-to-even; negative = padding when too small).
function cropOffset(have, want) {
  if (have < want) return -Math.floor((want - have) / 2);
  const half = (have - want) / 2;
  const r = Math.round(half);
  return Math.abs(half % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function toModelSize(img, H, W, resize) {
  if (img.width === W && img.height === H) return img;
  let resized;
  if (resize) { // short side → resize (torchvision's rule), then centre crop
    const scale = resize / Math.min(img.width, img.height);
    const w = img.width <= img.height ? resize : Math.floor(img.width * scale);
    const h = img.height <= img.width ? resize : Math.floor(img.height * scale);
    resized = resizeBilinear(img, w, h);
  } else {
    resized = resizeBilinear(img, W, H);
  }
  const top = cropOffset(resized.height, H);
  const left = cropOffset(resized.width, W);
  const out = new Uint8Array(W * H * 3); // zero where the crop overhangs
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const sy = y + top;
      const sx = x + left;
      if (sy < 0 || sx < 0 || sy >= resized.height || sx >= resized.width) continue;
      for (let c = 0; c < 3; c++) out[3 * (y * W + x) + c] = resized.rgb[3 * (sy * resized.width + sx) + c];
    }
  }
  return { width: W, height: H, rgb: out };
}

// The jet colormap (OpenCV's COLORMAP_JET, as pytorch-grad-cam uses), v in [0, 1] → [r, g, b].
function jet(v) {
  const c = (x) => Math.round(255 * Math.min(Math.max(x, 0), 1));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

function writePng(file, width, height, pixel) {
  const png = new PNG({ width, height });
  for (let i = 0; i < width * height; i++) {
    const [r, g, b] = pixel(i);
    png.data[4 * i] = r;
    png.data[4 * i + 1] = g;
    png.data[4 * i + 2] = b;
    png.data[4 * i + 3] = 255;
  }
  fs.writeFileSync(file, PNG.sync.write(png));
}

// ---- main
async function main() {
  const args = process.argv.slice(2);
  let classIndex = -1;
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--class') {
      const v = args[++i];
      if (v === undefined || !/^-?\d+$/.test(v)) usage('--class takes an integer (-1 = top-1)');
      classIndex = Number(v);
    } else if (args[i] === '-h' || args[i] === '--help') {
      usage();
    } else {
      positional.push(args[i]);
    }
  }
  if (positional.length !== 3) usage('expected MODEL.cam.onnx IMAGE.png OUT_PREFIX');
  const [modelPath, imagePath, outPrefix] = positional;

  let bytes;
  try {
    bytes = fs.readFileSync(modelPath);
  } catch (err) {
    die(`${modelPath}: cannot read it (${err.code || err.message})`);
  }
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 3 });
  } catch (err) {
    die(`${modelPath}: onnxruntime cannot load it (${String(err.message || err).split('\n')[0]})`);
  }
  let meta = {};
  try {
    meta = modelMetadata(bytes);
  } catch (err) {
    console.error(`warning: ${modelPath}: cannot read its metadata (${err.message})`);
  }
  const imageInput = meta['onnxcam.image_input'] || session.inputNames.find((n) => n !== 'class_index');
  const inMeta = session.inputMetadata.find((m) => m.name === imageInput);
  if (!session.outputNames.includes('heatmap') || !inMeta || inMeta.type !== 'uint8') {
    die(`${modelPath}: needs a graph exported with \`onnxcam export ... --raw-input --heatmap gradcam\` `
          + '(uint8 pixel input and a heatmap output)');
  }
  const pre = meta['onnxcam.preprocess'] ? JSON.parse(meta['onnxcam.preprocess']) : {};
  const [H, W] = pre.size || inMeta.shape.slice(1, 3);
  if (!Number.isInteger(H) || !Number.isInteger(W)) die(`${modelPath}: cannot tell the model's input size`);

  let image;
  try {
    image = toModelSize(readPng(imagePath), H, W, pre.resize);
  } catch (err) {
    die(`${imagePath}: cannot read it as PNG (${err.message})`);
  }

  const feeds = {
    [imageInput]: new ort.Tensor('uint8', image.rgb, [1, H, W, 3]),
    class_index: new ort.Tensor('int64', BigInt64Array.from([BigInt(classIndex)]), [1]),
  };
  const result = await session.run(feeds, ['heatmap', 'logits', 'target']);
  const heatmap = result.heatmap.data; // Float32Array, H*W
  const logits = Array.from(result.logits.data);
  const target = Number(result.target.data[0]);
  const labels = meta['onnxcam.labels'] ? JSON.parse(meta['onnxcam.labels']) : null;
  const top1 = logits.indexOf(Math.max(...logits));

  fs.mkdirSync(path.dirname(path.resolve(outPrefix)), { recursive: true });
  writePng(`${outPrefix}.heatmap.png`, W, H, (i) => jet(heatmap[i]));
  writePng(`${outPrefix}.overlay.png`, W, H, (i) => jet(heatmap[i]).map(
    (v, c) => Math.round(0.5 * v + 0.5 * image.rgb[3 * i + c])));
  const rows = [];
  for (let y = 0; y < H; y++) rows.push(Array.from(heatmap.subarray(y * W, (y + 1) * W)));
  const summary = {
    model: modelPath,
    image: imagePath,
    method: meta['onnxcam.heatmap_method'] || null,
    size: [H, W],
    class_index: classIndex,
    target,
    target_label: labels ? labels[target] ?? null : null,
    target_logit: logits[target],
    top1,
    top_logit: logits[top1],
    logits,
    heatmap: rows,
  };
  fs.writeFileSync(`${outPrefix}.heatmap.json`, JSON.stringify(summary));
  const label = summary.target_label ? ` (${summary.target_label})` : '';
  console.log(`target ${target}${label}, logit ${logits[target].toFixed(4)}; wrote ${outPrefix}.heatmap.png, `
              + `${outPrefix}.overlay.png, ${outPrefix}.heatmap.json`);
}

main().catch((err) => {
  console.error(`error: ${String(err.message || err).split('\n')[0]}`);
  process.exit(1);
});
