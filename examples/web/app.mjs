// The page: a photo in, the model's top-5 classes and a heatmap over the photo out, computed by an
// onnxcam graph (--raw-input --heatmap METHOD) on onnxruntime-web — WebGPU when the browser has a
// GPU adapter, WebAssembly otherwise (`?ep=wasm` or `?ep=webgpu` forces one).
//
// State for people and for tests: <body data-state="loading|ready|running|done|error">, the
// #message line, and window.onnxcam = {last: {pixels, heatmap, classIndex, target, top1, top5,
// method, ms, ...} (the uint8 pixels fed to the graph and the heatmap it returned, as plain
// arrays), runs: explanations shown so far, errors: error messages shown so far}.
import * as ort from './node_modules/onnxruntime-web/dist/ort.min.mjs';

import {
  graphInfo, heatmapToPhoto, modelMetadata, modelPixels, overlayPixels, rgbOnWhite, softmax, topK,
} from '../js/onnxcam.mjs';

const MAX_PIXELS = 89_478_485; // the Python runtime's decompression-bomb limit
const VIEW_SIDE = 640; // the longest side the photo is shown at
const $ = (id) => document.getElementById(id);
const state = { models: [], graph: null, photo: null, prepared: null, classIndex: -1, busy: false };
window.onnxcam = { last: null, runs: 0, errors: 0, state };

ort.env.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

function show(stateName, message = '', isError = false) {
  document.body.dataset.state = stateName;
  $('message').textContent = message;
  $('message').classList.toggle('error', isError);
  if (isError) window.onnxcam.errors += 1;
}

async function provider() {
  const wanted = new URLSearchParams(location.search).get('ep');
  if (wanted === 'wasm' || wanted === 'webgpu') return wanted;
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  return adapter ? 'webgpu' : 'wasm';
}

// ---- the graph
async function loadGraph(model) {
  const response = await fetch(model.url);
  if (!response.ok) throw new Error(`${model.name}: cannot fetch it (HTTP ${response.status})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const meta = modelMetadata(bytes);
  let ep = await provider();
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: [ep], logSeverityLevel: 3 });
  } catch (err) {
    if (ep === 'wasm') throw err;
    console.warn(`WebGPU failed (${err.message}); using WebAssembly`);
    ep = 'wasm';
    session = await ort.InferenceSession.create(bytes, { executionProviders: [ep], logSeverityLevel: 3 });
  }
  const info = graphInfo(meta, session);
  $('provider').textContent = ep === 'webgpu' ? 'WebGPU' : `WebAssembly (${ort.env.wasm.numThreads} thread(s))`;
  return { ...info, session, ep, name: model.name, method: info.method || model.method };
}

async function chooseModel(index) {
  show('loading', `Loading ${state.models[index].name}…`);
  $('method').disabled = true;
  try {
    state.graph = await loadGraph(state.models[index]);
  } catch (err) {
    show('error', `${state.models[index].name}: cannot load the graph (${String(err.message || err).split('\n')[0]})`, true);
    return;
  } finally {
    $('method').disabled = state.models.length < 2;
  }
  show('ready', 'Open or drop a photo.');
  if (state.photo) { // the same photo and class with the new graph (its own preprocessing)
    state.prepared = prepare(state.photo);
    await explain(state.classIndex);
  }
}

function prepare(photo) {
  const { preprocess, H, W } = state.graph;
  return modelPixels(photo.rgb, photo.width, photo.height, { resize: null, ...preprocess, size: [H, W] });
}

// ---- the photo
async function decode(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', premultiplyAlpha: 'none',
                                             colorSpaceConversion: 'none' });
  } catch {
    throw new Error(`${file.name}: not an image this browser can decode`);
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) throw new Error(`${file.name}: refused, ${width}x${height} is above the pixel limit`);
  if (!width || !height) throw new Error(`${file.name}: the image has no pixels`);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, width, height, { colorSpace: 'srgb' }).data;
  return { name: file.name, bitmap, width, height, rgb: rgbOnWhite(rgba, width * height) };
}

async function openFile(file) {
  if (!file || state.busy) return;
  if (!state.graph) {
    show('error', 'The model is not loaded yet.', true);
    return;
  }
  try {
    show('running', `Reading ${file.name}…`);
    const photo = await decode(file);
    state.prepared = prepare(photo);
    state.photo = photo;
  } catch (err) {
    show('error', err.message, true); // the previous result stays on screen; the page keeps working
    return;
  }
  await explain(-1);
}

// ---- the explanation
async function run(classIndex) {
  const { session, imageInput, H, W } = state.graph;
  const feeds = {
    [imageInput]: new ort.Tensor('uint8', state.prepared.pixels, [1, H, W, 3]),
    class_index: new ort.Tensor('int64', BigInt64Array.from([BigInt(classIndex)]), [1]),
  };
  const started = performance.now();
  const out = await session.run(feeds, ['heatmap', 'logits', 'target']);
  const ms = performance.now() - started;
  return { heatmap: out.heatmap.data, logits: Array.from(out.logits.data), target: Number(out.target.data[0]), ms };
}

async function explain(classIndex) {
  if (state.busy) return;
  state.busy = true;
  show('running', `Explaining ${state.photo.name}…`);
  try {
    const result = await run(classIndex);
    state.classIndex = classIndex;
    render(result);
    publish(result, classIndex);
    show('done', `${state.photo.name}: where the model looks for “${label(result.target)}”.`);
  } catch (err) {
    show('error', `${state.photo.name}: the explanation failed (${String(err.message || err).split('\n')[0]})`, true);
  } finally {
    state.busy = false;
  }
}

function label(index) {
  const { labels } = state.graph;
  return labels && labels[index] !== undefined ? labels[index] : `class ${index}`;
}

function render({ heatmap, logits, target, ms }) {
  const { photo, prepared } = state;
  const scale = Math.min(1, VIEW_SIDE / Math.max(photo.width, photo.height));
  const w = Math.max(1, Math.round(photo.width * scale));
  const h = Math.max(1, Math.round(photo.height * scale));
  const view = $('view');
  view.width = w;
  view.height = h;
  const context = view.getContext('2d', { willReadFrequently: true });
  context.drawImage(photo.bitmap, 0, 0, w, h);
  const shown = context.getImageData(0, 0, w, h);
  const rgb = rgbOnWhite(shown.data, w * h);
  const blended = overlayPixels(rgb, heatmapToPhoto(heatmap, prepared.geometry, h, w));
  for (let i = 0; i < w * h; i++) {
    shown.data.set(blended.subarray(3 * i, 3 * i + 3), 4 * i);
    shown.data[4 * i + 3] = 255;
  }
  context.putImageData(shown, 0, 0);
  renderClasses(logits, target);
  $('time').textContent = `${ms.toFixed(0)} ms per explanation`;
}

function renderClasses(logits, target) {
  const probs = softmax(logits);
  const shown = topK(probs, 5);
  if (!shown.includes(target)) shown.push(target);
  $('explained').textContent = `Explained: ${label(target)}`;
  $('classes').replaceChildren(...shown.map((c) => {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.className = 'class';
    button.dataset.class = String(c);
    button.setAttribute('aria-pressed', String(c === target));
    button.innerHTML = '<span class="score"></span><span class="name"></span>';
    button.querySelector('.name').textContent = label(c);
    button.querySelector('.score').textContent = `${(100 * probs[c]).toFixed(1)} %`;
    button.addEventListener('click', () => explain(c));
    item.append(button);
    return item;
  }));
}

function publish({ heatmap, logits, target, ms }, classIndex) {
  const probs = softmax(logits);
  window.onnxcam.last = {
    photo: state.photo.name,
    photoSize: [state.photo.height, state.photo.width],
    size: [state.graph.H, state.graph.W],
    pixels: Array.from(state.prepared.pixels),
    heatmap: Array.from(heatmap),
    classIndex,
    target,
    top1: logits.indexOf(Math.max(...logits)),
    top5: topK(probs, 5).map((c) => ({ index: c, label: label(c), score: probs[c] })),
    method: state.graph.method,
    provider: state.graph.ep,
    ms,
  };
  window.onnxcam.runs += 1;
}

// ---- wiring
async function start() {
  $('file').addEventListener('change', (event) => openFile(event.target.files[0]));
  document.addEventListener('dragover', (event) => { event.preventDefault(); document.body.classList.add('dragging'); });
  document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    document.body.classList.remove('dragging');
    openFile(event.dataTransfer.files[0]);
  });
  $('method').addEventListener('change', (event) => chooseModel(Number(event.target.value)));
  try {
    state.models = await (await fetch('/models.json')).json();
  } catch {
    state.models = [];
  }
  if (!state.models.length) {
    show('error', 'No explanation graph is served: start the page with `make web` or examples/web/serve.py MODEL.', true);
    return;
  }
  $('method').replaceChildren(...state.models.map((m, i) => new Option(m.method, String(i))));
  await chooseModel(0);
}

start();
