// The dashboard's charts: every <div class="chart" data-series="..."> is drawn with uPlot from
// the JSON in <script id="chart-data" type="application/json"> (the server embeds it; nothing
// is fetched). Without JavaScript the pages show the same numbers in tables.
(function () {
  "use strict";
  var el = document.getElementById("chart-data");
  if (!el || typeof uPlot === "undefined") { return; }
  var data = JSON.parse(el.textContent);
  var charts = {};
  function plain(v) { return v == null ? "" : String(Math.round(v * 10) / 10); }
  function seconds(v) { return v == null ? "" : v < 120 ? plain(v) + " s" : plain(v / 60) + " min"; }
  function bytes(v) {
    if (v == null) { return ""; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (Math.round(v * 10) / 10) + " " + units[i];
  }
  document.querySelectorAll(".chart[data-series]").forEach(function (div) {
    var key = div.getAttribute("data-series");
    var ys = data.series[key];
    if (!ys) { return; }
    var label = div.getAttribute("data-label") || key;
    var unit = div.getAttribute("data-unit") || "";
    var fmt = unit === "bytes" ? bytes : unit === "s" ? seconds : plain;
    var width = Math.max(260, div.clientWidth - 4);
    var opts = {
      width: width,
      height: 180,
      legend: { show: true },
      scales: { x: { time: true } },
      series: [{}, { label: label, value: function (u, v) { return v == null ? "–" : fmt(v); }, stroke: "#2458a6", fill: "rgba(36,88,166,0.08)", width: 2,
                     spanGaps: false, points: { show: data.t.length < 60 } }],
      axes: [{}, { size: 80, values: function (u, vals) { return vals.map(fmt); } }],
    };
    var plot = new uPlot(opts, [data.t, ys], div);
    charts[key] = plot;
    div.setAttribute("data-points", String(ys.filter(function (v) { return v !== null; }).length));
  });
  // For people resizing the window, and for tests reading what was drawn.
  window.walarchiveCharts = charts;
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (k) {
      var div = charts[k].root.parentNode;
      charts[k].setSize({ width: Math.max(260, div.clientWidth - 4), height: 180 });
    });
  });
})();
