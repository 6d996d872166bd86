// fraudops dashboard: draws the monitoring charts with uPlot and sends analysts' verdicts.
(function () {
  "use strict";
  const dataNode = document.getElementById("chart-data");
  const charts = dataNode ? JSON.parse(dataNode.textContent) : null;
  const width = (el) => Math.max(400, el.clientWidth || 600);

  function line(el, x, series, opts) {
    const data = [x].concat(series.map((s) => s.values));
    const conf = {
      width: width(el),
      height: 260,
      scales: { x: { time: true }, y: opts.y || {} },
      series: [{}].concat(series.map((s) => ({
        label: s.label, stroke: s.color, width: 2, fill: s.fill, dash: s.dash,
        points: { show: true, size: 5 }, spanGaps: true,
      }))),
      axes: [{}, { label: opts.ylabel || "" }],
    };
    if (opts.bars) {
      conf.series[1].paths = uPlot.paths.bars({ size: [0.6, 40] });
      conf.series[1].points = { show: false };
    }
    return new uPlot(conf, data, el);
  }

  function draw() {
    if (!charts) return;
    const runs = charts.runs || {}, days = charts.days || {};
    document.querySelectorAll("[data-chart]").forEach((el) => {
      const name = el.dataset.chart;
      if (name === "drift" && runs.x) {
        line(el, runs.x, [
          { label: "drift share", color: "#7f8c8d", values: runs.drift_share },
          { label: "score PSI", color: "#8e44ad", values: runs.score_psi },
        ], { ylabel: "value" });
      } else if (name === "ap" && runs.x) {
        line(el, runs.x, [
          { label: "estimated AP low", color: "rgba(230,85,13,0.35)", dash: [4, 4], values: runs.estimated_ap_low },
          { label: "estimated AP high", color: "rgba(230,85,13,0.35)", dash: [4, 4], values: runs.estimated_ap_high },
          { label: "estimated AP", color: "#e6550d", values: runs.estimated_ap },
          { label: "realized AP", color: "#2c7fb8", values: runs.realized_ap },
        ], { ylabel: "average precision", y: { range: [0, 1] } });
      } else if (name === "alerts" && days.x && days.x.length) {
        line(el, days.x, [{ label: "alerts", color: "#c0392b", fill: "rgba(192,57,43,0.3)", values: days.alerts }],
          { ylabel: "alerts", bars: true });
      } else if (name === "daily_ap" && days.x && days.x.length) {
        line(el, days.x, [
          { label: "estimated AP", color: "#e6550d", values: days.estimated_ap },
          { label: "realized AP", color: "#2c7fb8", values: days.realized_ap },
        ], { ylabel: "average precision", y: { range: [0, 1] } });
      }
      el.dataset.drawn = el.querySelector("canvas") ? "yes" : "no";
    });
  }

  async function mark(button) {
    const row = button.closest("[data-tx]");
    const analyst = document.getElementById("analyst");
    const message = document.getElementById("message");
    const response = await fetch("/api/verdicts", {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ transaction_id: row.dataset.tx, verdict: button.dataset.verdict, analyst: analyst.value }),
    });
    const body = await response.json();
    if (response.ok) {
      row.classList.add("done");
      row.querySelectorAll("button").forEach((b) => { b.disabled = true; });
      message.textContent = `${body.transaction_id}: ${body.verdict} (${body.analyst}, ${body.decided_at})`;
    } else {
      message.textContent = body.error;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.mark");
    if (button) mark(button);
  });
  draw();
})();
