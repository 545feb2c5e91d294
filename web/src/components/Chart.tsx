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

export interface Line {
  label: string;
  points: { t: number; v: number | null }[];
}

const PALETTE = ["--accent", "--ok", "--warn", "--danger"];
const FALLBACK = ["#2f5fd0", "#1a7f37", "#9a6700", "#cf222e", "#8250df", "#0a7ea4", "#bf3989", "#57606a"];

/** Lines over time (uPlot): points of every line aligned on the union of their times. */
export function LineChart({ label, lines, unit }: { label: string; lines: Line[]; unit?: string }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = box.current;
    if (!el || lines.length === 0) return;
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue("--fg-muted").trim() || "#555";
    const grid = css.getPropertyValue("--border").trim() || "#ddd";
    const colors = lines.map((_, i) => (i < PALETTE.length && css.getPropertyValue(PALETTE[i]).trim()) || FALLBACK[i % FALLBACK.length]);
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const times = [...new Set(lines.flatMap((l) => l.points.map((p) => p.t)))].sort((a, b) => a - b);
    const at = new Map(times.map((t, i) => [t, i]));
    const columns = lines.map((l) => {
      const col: (number | null)[] = new Array(times.length).fill(null);
      for (const p of l.points) col[at.get(p.t)!] = p.v;
      return col;
    });
    const plot = new uPlot(
      {
        width: Math.max(280, el.clientWidth),
        height: 220,
        legend: { show: lines.length > 1 },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: [axis, { ...axis, size: 72, values: (_u, ticks) => ticks.map((v) => `${v.toLocaleString()}${unit ? ` ${unit}` : ""}`) }],
        series: [{}, ...lines.map((l, i) => ({ label: l.label, stroke: colors[i], width: 2, spanGaps: true }))],
      },
      [times.map((t) => t / 1000), ...columns],
      el,
    );
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(280, el.clientWidth), height: 220 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [lines, unit]);
  const count = lines.reduce((n, l) => n + l.points.length, 0);
  return (
    <figure className="chart">
      <div ref={box} role="img" aria-label={`${label}: ${lines.length} line(s), ${count} point(s)`} />
    </figure>
  );
}
