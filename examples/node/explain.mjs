#!/usr/bin/env node
// Explain one PNG with an onnxcam graph exported with `--raw-input --heatmap METHOD`, in Node.js
// with onnxruntime-node only (no Python, no PyTorch):
//
//   node explain.mjs MODEL.cam.onnx IMAGE.png OUT_PREFIX [--class N]
//
// The graph takes uint8 RGB pixels [N, H, W, 3] at the model's input size plus `class_index`
// (int64 [N], -1 = the top-1 class) and returns `heatmap` [N, H, W] in [0, 1], `logits`, `target`.
// Writes OUT_PREFIX.heatmap.png (turbo colormap, the Python runtime's), OUT_PREFIX.overlay.png
// (heatmap over the image) and OUT_PREFIX.heatmap.json (the float heatmap, target class, logits).
//
// Images whose size differs from the model's are resized and centre-cropped as the graph's
// onnxcam.preprocess metadata says, with Pillow's bilinear filter re-implemented in
// ../js/onnxcam.mjs (shared with the browser page in ../web), so the pixels equal the Python
// runtime's for a PNG.
import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';

import ort from 'onnxruntime-node';
import pngjs from 'pngjs';

import { colorize, graphInfo, modelMetadata, modelPixels, overlayPixels, rgbOnWhite } from '../js/onnxcam.mjs';

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

// ---- images
function readPng(file) {
  const png = PNG.sync.read(fs.readFileSync(file)); // RGBA, 8 bits per channel (16-bit scaled down)
  return { width: png.width, height: png.height, rgb: rgbOnWhite(png.data, png.width * png.height) };
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
  let info;
  try {
    info = graphInfo(meta, session);
  } catch (err) {
    die(`${modelPath}: ${err.message}`);
  }
  const { imageInput, H, W, labels } = info;

  let image;
  try {
    const photo = readPng(imagePath);
    image = modelPixels(photo.rgb, photo.width, photo.height, { resize: null, ...info.preprocess, size: [H, W] });
  } catch (err) {
    die(`${imagePath}: cannot read it as PNG (${err.message})`);
  }

  const feeds = {
    [imageInput]: new ort.Tensor('uint8', image.pixels, [1, H, W, 3]),
    class_index: new ort.Tensor('int64', BigInt64Array.from([BigInt(classIndex)]), [1]),
  };
  const result = await session.run(feeds, ['heatmap', 'logits', 'target']);
  const heatmap = result.heatmap.data; // Float32Array, H*W
  const logits = Array.from(result.logits.data);
  const target = Number(result.target.data[0]);
  const top1 = logits.indexOf(Math.max(...logits));

  fs.mkdirSync(path.dirname(path.resolve(outPrefix)), { recursive: true });
  const overlay = overlayPixels(image.pixels, heatmap);
  writePng(`${outPrefix}.heatmap.png`, W, H, (i) => colorize(heatmap[i]));
  writePng(`${outPrefix}.overlay.png`, W, H, (i) => [overlay[3 * i], overlay[3 * i + 1], overlay[3 * i + 2]]);
  const rows = [];
  for (let y = 0; y < H; y++) rows.push(Array.from(heatmap.subarray(y * W, (y + 1) * W)));
  const summary = {
    model: modelPath,
    image: imagePath,
    method: info.method,
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
