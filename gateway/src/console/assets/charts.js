// Small live line charts drawn as inline SVG polylines: no library, no canvas.

/** A rolling series of at most `capacity` points drawn into the `<svg>` `svg` (viewBox 240×60). */
export class Sparkline {
  constructor(svg, capacity = 60) {
    this.svg = svg;
    this.capacity = capacity;
    this.points = [];
    this.line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.append(this.line);
  }

  /** Add `value` and redraw; the y axis runs from 0 to `max` (default: the largest value shown, at least 1). */
  push(value, max) {
    this.points.push(Number.isFinite(value) ? value : 0);
    if (this.points.length > this.capacity) this.points.shift();
    const top = max ?? Math.max(1, ...this.points);
    const step = 240 / (this.capacity - 1);
    // The newest point sits at the right edge; older ones scroll off to the left.
    const offset = this.capacity - this.points.length;
    const coords = this.points.map((v, i) => `${((offset + i) * step).toFixed(1)},${(58 - (v / top) * 56).toFixed(1)}`);
    this.line.setAttribute("points", coords.join(" "));
    this.svg.dataset.points = String(this.points.length);
  }
}
