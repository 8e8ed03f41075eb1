// The race replay (gr.HTML's js_on_load: `element`, `props` and `watch` are Gradio's). The frames
// travel once as a small sprite image per run, and requestAnimationFrame reveals each side's blocks at
// their measured arrival times on one shared, slowed-down clock, with no server work (so replaying
// never touches the queue or the backend).
let frame = null;
const VIEW = 4;  // the viewer shows the newest block's frames VIEW times a tile's size
function paint(canvas, sprite, run, t, tau, fps) {
  const w = run.width, h = run.height, n = run.counts.length;
  const width = Math.max(n, VIEW) * w;
  canvas.width = width; canvas.height = (VIEW + 1) * h + 18;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = '#111'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const arrived = run.shown_s.filter(s => s <= t).length;
  if (arrived > 0) {  // the newest arrived block plays at the video's frame rate
    const b = arrived - 1, f = Math.floor(tau * fps) % run.counts[b];
    ctx.drawImage(sprite, f * w, b * h, w, h, (width - VIEW * w) / 2, 0, VIEW * w, VIEW * h);
  }
  ctx.font = '11px sans-serif'; ctx.textAlign = 'center';
  for (let b = 0; b < n; b++) {  // one tile per block (its last frame), shown from its arrival on
    const x = b * w, y = VIEW * h + 2;
    if (b < arrived) {
      ctx.drawImage(sprite, (run.counts[b] - 1) * w, b * h, w, h, x, y, w, h);
      ctx.fillStyle = '#ddd'; ctx.fillText(run.shown_s[b].toFixed(2) + ' s', x + w / 2, y + h + 13);
    } else {
      ctx.fillStyle = '#2a2a2a'; ctx.fillRect(x + 1, y + 1, w - 2, h - 2);
    }
    if (run.switches.includes(b)) {  // a yellow edge before the first block under a new prompt
      ctx.fillStyle = '#ffd400'; ctx.fillRect(x, y, 2, h);
    }
  }
}
function setup() {
  cancelAnimationFrame(frame);
  const data = props.value, button = element.querySelector('.race-play');
  const clock = element.querySelector('.race-clock');
  const canvases = [...element.querySelectorAll('canvas')];
  const captions = [...element.querySelectorAll('figcaption')];
  const figures = [...element.querySelectorAll('figure')];  // a third for the sequence run, when it ran
  element.dataset.state = data && data.runs ? 'ready' : 'empty';
  if (!data || !data.runs) { button.disabled = true; return; }
  const sprites = data.runs.map(run => Object.assign(new Image(), {src: run.sprite}));
  const end = Math.max(...data.runs.map(run => run.shown_s[run.shown_s.length - 1]));
  const show = (t, tau) => data.runs.forEach((run, i) => paint(canvases[i], sprites[i], run, t, tau, data.fps));
  figures.forEach((figure, i) => { figure.hidden = i >= data.runs.length; });
  data.runs.forEach((run, i) => { captions[i].textContent = run.label; });
  sprites.forEach(sprite => sprite.addEventListener('load', () => show(0, 0)));
  clock.textContent = (data.runs.length > 2 ? 'All three' : 'Both') + ' runs on one clock, ' + data.slow.toFixed(1) + '\u00d7 slower than they ran.';
  button.disabled = false;
  button.onclick = () => {
    cancelAnimationFrame(frame);
    const start = performance.now();
    element.dataset.state = 'playing';
    const step = now => {
      const tau = (now - start) / 1000, t = Math.min(tau / data.slow, end);
      show(t, tau);
      clock.textContent = 'run time ' + t.toFixed(2) + ' s of ' + end.toFixed(2) + ' s, replayed '
        + data.slow.toFixed(1) + '\u00d7 slower';
      if (t < end) { frame = requestAnimationFrame(step); } else { element.dataset.state = 'done'; }
    };
    frame = requestAnimationFrame(step);
  };
}
setup();
watch('value', setup);
