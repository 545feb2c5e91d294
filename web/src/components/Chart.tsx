// A small time-series chart (uPlot). Loaded only by the pages that draw one.
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export function BarChart({ label, points }: { label: string; points: { t: number; v: number }[] }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const css = getComputedStyle(document.documentElement);
    const accent = css.getPropertyValue("--accent").trim() || "#2f5fd0";
    const fg = css.getPropertyValue("--fg-muted").trim() || "#555";
    const grid = css.getPropertyValue("--border").trim() || "#ddd";
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const plot = new uPlot(
      {
        width: Math.max(280, el.clientWidth),
        height: 180,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
        axes: [axis, { ...axis, size: 40 }],
        series: [{}, { label, stroke: accent, fill: `${accent}55`, paths: uPlot.paths.bars!({ size: [0.8, 40] }) }],
      },
      [points.map((p) => p.t / 1000), points.map((p) => p.v)],
      el,
    );
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(280, el.clientWidth), height: 180 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [label, points]);
  const total = points.reduce((n, p) => n + p.v, 0);
  return (
    <figure className="chart">
      <div ref={box} role="img" aria-label={`${label}: ${total} in the period shown`} />
      <figcaption className="muted">{label}</figcaption>
    </figure>
  );
}
