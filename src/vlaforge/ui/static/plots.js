// Line plots as inline SVG. The plotted series stay on the element (data-series, JSON) so they can be read.
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
const SVGNS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs) {
  const el = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

// series: {name: [y0, y1, ...]} (or [[x, y], ...] pairs when xs is given per series); returns the <svg>.
function linePlot(title, series, opts) {
  opts = opts || {};
  const W = opts.width || 520, H = opts.height || 180, L = 44, R = 110, T = 20, B = 22;
  const svg = svgEl("svg", { width: W, height: H, class: "plot" });
  svg.dataset.series = JSON.stringify(series);
  svg.dataset.title = title;
  const names = Object.keys(series);
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
  const pts = {};
  for (const n of names) {
    pts[n] = series[n].map((v, i) => (Array.isArray(v) ? v : [i, v])).filter((p) => Number.isFinite(p[1]));
    for (const [x, y] of pts[n]) {
      xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
    }
  }
  if (!Number.isFinite(xmin)) { xmin = 0; xmax = 1; ymin = 0; ymax = 1; }
  if (xmax === xmin) xmax = xmin + 1;
  if (ymax === ymin) { ymax += 0.5; ymin -= 0.5; }
  const sx = (x) => L + ((x - xmin) / (xmax - xmin)) * (W - L - R);
  const sy = (y) => T + (1 - (y - ymin) / (ymax - ymin)) * (H - T - B);
  svg.appendChild(svgEl("text", { x: L, y: 13, "font-size": 12 })).textContent = title;
  for (const y of [ymin, ymax]) {
    svg.appendChild(svgEl("text", { x: 2, y: sy(y) + 4, "font-size": 10, fill: "#666" })).textContent = y.toFixed(3);
  }
  svg.appendChild(svgEl("text", { x: W - R - 30, y: H - 6, "font-size": 10, fill: "#666" })).textContent = String(xmax);
  svg.appendChild(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#ccc" }));
  names.forEach((n, k) => {
    const d = pts[n].map(([x, y], i) => (i ? "L" : "M") + sx(x).toFixed(1) + "," + sy(y).toFixed(1)).join("");
    svg.appendChild(svgEl("path", { d, fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 1.4 }));
    svg.appendChild(svgEl("text", { x: W - R + 6, y: T + 12 + 13 * k, "font-size": 11, fill: COLORS[k % COLORS.length] }))
      .textContent = n;
  });
  const cursor = svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#000", "stroke-dasharray": "3,3", visibility: "hidden" });
  svg.appendChild(cursor);
  svg.setCursor = (x) => {
    cursor.setAttribute("x1", sx(x)); cursor.setAttribute("x2", sx(x)); cursor.setAttribute("visibility", "visible");
    svg.dataset.cursor = String(x);
  };
  return svg;
}

// Columns of a (T, D) array as named series.
function columns(rows, names) {
  const out = {};
  (names || []).forEach((n, j) => { out[n] = rows.map((r) => r[j]); });
  return out;
}
