(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("timeline-data").textContent);
  var FIELDS = 6, LABEL_W = 150, AXIS_H = 24, RIGHT_PAD = 12;
  var bars = data.bars, count = bars.length / FIELDS, lanes = data.lanes;
  var laneH = lanes.length <= 16 ? 18 : Math.max(8, Math.min(18, Math.floor(720 / lanes.length)));
  var span = Math.max(data.end, 1e-6);
  var view = {t0: 0, t1: span};
  var canvas = document.getElementById("lanes"), ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip");
  var plotW = 1, pending = false, drag = null;

  // Bars come sorted by lane, then start: each lane is one contiguous range.
  var laneFrom = [], laneTo = [];
  for (var l = 0; l < lanes.length; l++) { laneFrom.push(0); laneTo.push(0); }
  for (var i = count - 1; i >= 0; i--) { laneFrom[bars[i * FIELDS]] = i; }
  for (i = 0; i < count; i++) { laneTo[bars[i * FIELDS]] = i + 1; }
  var laneMarkers = lanes.map(function () { return []; });
  data.markers.forEach(function (m) { laneMarkers[m[0]].push(m); });

  function stripes() {
    var tile = document.createElement("canvas");
    tile.width = tile.height = 6;
    var t = tile.getContext("2d");
    t.strokeStyle = "rgba(0,0,0,0.35)"; t.lineWidth = 2;
    t.beginPath(); t.moveTo(0, 6); t.lineTo(6, 0); t.moveTo(-3, 3); t.lineTo(3, -3);
    t.moveTo(3, 9); t.lineTo(9, 3); t.stroke();
    return ctx.createPattern(tile, "repeat");
  }
  var rerunPattern = stripes();
  var RERUN = data.outcomes.indexOf("rerun"), CRASH = data.outcomes.indexOf("crash");
  var TIMEOUT = data.outcomes.indexOf("timeout");

  function x(t) { return LABEL_W + (t - view.t0) / (view.t1 - view.t0) * plotW; }
  function timeAt(px) { return view.t0 + (px - LABEL_W) / plotW * (view.t1 - view.t0); }

  function fmt(s) {
    if (s === 0) return "0 s";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    var m = Math.floor(s / 60), r = Math.round(s - m * 60);
    if (m < 60) return m + " m " + (r < 10 ? "0" : "") + r + " s";
    var h = Math.floor(m / 60); m -= h * 60;
    return h + " h " + (m < 10 ? "0" : "") + m + " m";
  }

  function tickStep(seconds, pixels) {
    var raw = seconds / Math.max(1, pixels / 90), p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var k = 0; k < steps.length; k++) if (steps[k] * p >= raw) return steps[k] * p;
    return 10 * p;
  }

  function firstFrom(lane, t) {
    // Index of the first bar on `lane` that may reach t (bars on a lane do not overlap).
    var lo = laneFrom[lane], hi = laneTo[lane];
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (bars[mid * FIELDS + 1] <= t) lo = mid + 1; else hi = mid;
    }
    return Math.max(laneFrom[lane], lo - 1);
  }

  function drawAxis(height) {
    var step = tickStep(view.t1 - view.t0, plotW);
    ctx.fillStyle = "#55606c"; ctx.strokeStyle = "#e3e6ea"; ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (var t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      var px = Math.round(x(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(px, AXIS_H - 4); ctx.lineTo(px, height); ctx.stroke();
      ctx.fillText(fmt(t), px, AXIS_H / 2 - 2);
    }
  }

  function drawLabels() {
    ctx.fillStyle = "#1d232b"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.font = Math.min(12, laneH - 1) + "px system-ui, sans-serif";
    for (var l = 0; l < lanes.length; l++) {
      var name = lanes[l];
      // Keep the end of long names (host-123/gw7): the slot is what tells lanes apart.
      while (name.length > 2 && ctx.measureText(name).width > LABEL_W - 10) name = name.slice(1);
      if (name !== lanes[l]) name = "\\u2026" + name.slice(1);
      ctx.fillText(name, LABEL_W - 6, AXIS_H + l * laneH + laneH / 2);
    }
  }

  function drawGlyph(kind, px, top) {
    // A crash is an X at the bar's end, a timeout a triangle; a white halo keeps either
    // visible on its own bar, on a neighbour and on the lane background.
    ctx.beginPath();
    if (kind === TIMEOUT) {
      ctx.moveTo(px - 4, top); ctx.lineTo(px + 4, top); ctx.lineTo(px, top + 7); ctx.closePath();
    } else {
      ctx.moveTo(px - 3, top); ctx.lineTo(px + 3, top + 6);
      ctx.moveTo(px + 3, top); ctx.lineTo(px - 3, top + 6);
    }
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 3.5; ctx.stroke();
    ctx.strokeStyle = ctx.fillStyle = data.colours[kind]; ctx.lineWidth = 1.5; ctx.stroke();
    if (kind === TIMEOUT) ctx.fill();
  }

  function drawLane(l) {
    var top = AXIS_H + l * laneH + 1, h = laneH - 2, glyphs = [];
    for (var i = firstFrom(l, view.t0); i < laneTo[l]; i++) {
      var o = i * FIELDS, start = bars[o + 1];
      if (start > view.t1) break;
      var x0 = x(start), x1 = x(start + bars[o + 2]), w = x1 - x0;
      if (x1 < LABEL_W) continue;
      if (w > 3) w -= 1; else if (w < 1) w = 1;
      var outcome = bars[o + 3];
      ctx.fillStyle = data.colours[outcome];
      ctx.fillRect(x0, top, w, h);
      if (outcome === RERUN) { ctx.fillStyle = rerunPattern; ctx.fillRect(x0, top, w, h); }
      if (outcome === CRASH || outcome === TIMEOUT) glyphs.push([outcome, x1]);
    }
    glyphs.forEach(function (g) { drawGlyph(g[0], g[1], top); });
    laneMarkers[l].forEach(function (m) {
      var px = Math.round(x(m[1])) + 0.5;
      ctx.strokeStyle = data.markerColours[m[2]]; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, top + h); ctx.stroke();
      var kind = data.outcomes.indexOf(data.markerKinds[m[2]]);
      if (kind >= 0) drawGlyph(kind, px, top);
    });
  }

  function draw() {
    pending = false;
    var ratio = window.devicePixelRatio || 1, width = canvas.clientWidth || 800;
    var height = AXIS_H + lanes.length * laneH + 4;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    canvas.style.height = height + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    plotW = Math.max(1, width - LABEL_W - RIGHT_PAD);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
    for (var l = 0; l < lanes.length; l += 2) {
      ctx.fillStyle = "#f5f6f8"; ctx.fillRect(0, AXIS_H + l * laneH, width, laneH);
    }
    if (data.first > view.t0) {
      ctx.fillStyle = "rgba(120,130,145,0.12)";
      ctx.fillRect(LABEL_W, AXIS_H, Math.max(0, x(data.first) - LABEL_W), height - AXIS_H);
    }
    drawAxis(height);
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL_W, 0, plotW + RIGHT_PAD, height); ctx.clip();
    for (l = 0; l < lanes.length; l++) drawLane(l);
    ctx.restore();
    drawLabels();
  }

  function redraw() {
    if (!pending) { pending = true; window.requestAnimationFrame(draw); }
  }

  function hit(px, py) {
    var lane = Math.floor((py - AXIS_H) / laneH);
    if (lane < 0 || lane >= lanes.length || px < LABEL_W) return null;
    var t = timeAt(px), slack = 3 * (view.t1 - view.t0) / plotW, best = null, gap = Infinity;
    laneMarkers[lane].forEach(function (m) {
      var d = Math.abs(m[1] - t);
      if (d <= slack && d < gap) { gap = d; best = {marker: m}; }
    });
    if (best) return best;
    for (var i = firstFrom(lane, t - slack); i < laneTo[lane]; i++) {
      var o = i * FIELDS, start = bars[o + 1], end = start + bars[o + 2];
      if (start > t + slack) break;
      var d = t < start ? start - t : t > end ? t - end : 0;
      if (d <= slack && d < gap) { gap = d; best = {bar: i}; }
    }
    return best;
  }

  function describe(found) {
    if (found.marker) {
      var m = found.marker;
      return [m[3] || "(no test)", data.markerKinds[m[2]] + " at " + fmt(m[1]),
              "worker: " + lanes[m[0]], m[4]].join("\\n");
    }
    var o = found.bar * FIELDS, note = data.notes[String(found.bar)];
    var guess = bars[o + 5] ? " (estimated: since the previous test)" : "";
    var lines = [
      data.units[found.bar],
      "outcome: " + data.outcomes[bars[o + 3]],
      "duration: " + fmt(bars[o + 2]) + guess,
      "attempt: " + bars[o + 4],
      "worker: " + lanes[bars[o]],
      "started: " + fmt(bars[o + 1]) + " into the build"
    ];
    if (note) lines.push(note);
    return lines.join("\\n");
  }

  function place(event) {
    var box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  canvas.addEventListener("mousemove", function (event) {
    var at = place(event);
    if (drag) {
      var shift = (drag[0] - at[0]) / plotW * (drag[2] - drag[1]);
      setView(drag[1] + shift, drag[2] + shift);
      return;
    }
    var found = hit(at[0], at[1]);
    if (!found) { tip.hidden = true; return; }
    tip.textContent = describe(found);
    tip.hidden = false;
    var left = event.clientX + 14, top = event.clientY + 14;
    if (left + tip.offsetWidth > innerWidth - 8) left = event.clientX - tip.offsetWidth - 14;
    if (top + tip.offsetHeight > innerHeight - 8) top = event.clientY - tip.offsetHeight - 14;
    tip.style.left = Math.max(4, left) + "px"; tip.style.top = Math.max(4, top) + "px";
  });
  canvas.addEventListener("mouseleave", function () { tip.hidden = true; drag = null; });
  canvas.addEventListener("mousedown", function (event) {
    drag = [place(event)[0], view.t0, view.t1];
  });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("dblclick", function () { setView(0, span); });
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var t = timeAt(place(event)[0]), factor = Math.exp(event.deltaY * 0.0015);
    setView(t - (t - view.t0) * factor, t + (view.t1 - t) * factor);
  }, {passive: false});
  window.addEventListener("resize", redraw);

  function setView(t0, t1) {
    var width = Math.min(span, Math.max(t1 - t0, span / 1e5));
    t0 = Math.min(Math.max(0, t0), span - width);
    view.t0 = t0; view.t1 = t0 + width;
    redraw();
  }

  draw();
  document.body.setAttribute("data-rendered", "yes");
})();
