// Matte corrections in the single-image tab (issue 26): a box around the subject and "keep" /
// "remove" brush strokes, drawn over the input or the result pane and kept in IMAGE pixels,
// whatever the scale the image is shown at. app.js sends them with each /v1/matte request:
// the box as `box=x0,y0,x1,y1` (integers, x1/y1 exclusive, clipped to the image) and the
// strokes as the `hints` file, a PNG of the image's size (transparent = no hint, white = keep,
// black = remove; serve side: matting_lib.refine.hints.marks_from_image). Plain JavaScript, no
// build step.
"use strict";

(function (root) {
  // The server refuses boxes under 4 px a side (matting_lib.refine.hints.MIN_BOX_PX): a drag
  // that small is a click, and is ignored.
  const MIN_BOX = 4;
  const OVERLAY = { keep: "#16a34a", remove: "#dc2626" }; // what the panes show
  const HINT = { keep: "#ffffff", remove: "#000000" }; // what the hints image holds

  // A point in CSS pixels of the page -> image pixels (floats), for an element that shows a w x h
  // image scaled to `rect` (its getBoundingClientRect()).
  function toImage(rect, w, h, clientX, clientY) {
    return [(clientX - rect.left) * w / rect.width, (clientY - rect.top) * h / rect.height];
  }

  // A drag from a to b (image pixels, floats) -> [x0, y0, x1, y1]: integers, every pixel the drag
  // touched, x1/y1 exclusive, clipped to the w x h image; null for a drag under MIN_BOX a side.
  function boxFromDrag(a, b, w, h) {
    const clip = (v, hi) => Math.min(Math.max(v, 0), hi);
    const x0 = clip(Math.floor(Math.min(a[0], b[0])), w), x1 = clip(Math.ceil(Math.max(a[0], b[0])), w);
    const y0 = clip(Math.floor(Math.min(a[1], b[1])), h), y1 = clip(Math.ceil(Math.max(a[1], b[1])), h);
    return x1 - x0 < MIN_BOX || y1 - y0 < MIN_BOX ? null : [x0, y0, x1, y1];
  }

  // One stroke ({mode, width, points: [[x, y], ...]} in image pixels) on a 2D context.
  function drawStroke(ctx, stroke, colour) {
    const pts = stroke.points;
    ctx.fillStyle = ctx.strokeStyle = colour;
    if (pts.length === 1) {
      ctx.beginPath();
      ctx.arc(pts[0][0], pts[0][1], stroke.width / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.lineWidth = stroke.width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (const p of pts.slice(1)) ctx.lineTo(p[0], p[1]);
    ctx.stroke();
  }

  // The edits of one image as a list of actions ({kind: "box", box} or {kind: "stroke", mode,
  // width, points}); the box in force is the last box action. Undo drops the last action.
  class Hints {
    constructor(actions = []) { this.actions = actions; }
    get box() {
      for (let i = this.actions.length - 1; i >= 0; i--) if (this.actions[i].kind === "box") return this.actions[i].box;
      return null;
    }
    get strokes() { return this.actions.filter((a) => a.kind === "stroke"); }
    get empty() { return this.actions.length === 0; }
    // What the server will say it applied (X-Matting-Hints).
    get label() {
      const parts = [];
      if (this.box) parts.push("box");
      if (this.strokes.length) parts.push("strokes");
      return parts.join("+") || "none";
    }
    // The hints image as a PNG Blob (null without strokes): transparent, keep white, remove black,
    // later strokes over earlier ones. Anti-aliased rims are under 50% opacity: no hint there.
    async png(w, h) {
      const strokes = this.strokes;
      if (!strokes.length) return null;
      const canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      const ctx = canvas.getContext("2d");
      for (const s of strokes) drawStroke(ctx, s, HINT[s.mode]);
      return new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the hints image"))), "image/png"));
    }
  }

  // The tools over the image panes. `panes`: [{frame, img, canvas}], each canvas an overlay with
  // the image's own resolution, laid over its img at the img's displayed size. `onChange(hints)`
  // after every finished box or stroke, undo and reset.
  class HintEditor {
    constructor({ panes, cursor, onChange }) {
      this.panes = panes;
      this.cursor = cursor;
      this.onChange = onChange;
      this.w = 0;
      this.h = 0;
      this.hints = new Hints();
      this.tool = "";
      this.brush = 24; // CSS pixels on screen; a stroke's width in image pixels depends on the scale it was drawn at
      this.drag = null; // the box or stroke being drawn
      const observer = new ResizeObserver(() => this.place());
      for (const pane of panes) {
        observer.observe(pane.img);
        observer.observe(pane.frame);
        pane.img.addEventListener("load", () => this.place());
        pane.frame.addEventListener("scroll", () => this.hideCursor());
        const c = pane.canvas;
        c.addEventListener("pointerdown", (e) => this.down(e, c));
        c.addEventListener("pointermove", (e) => this.move(e, c));
        c.addEventListener("pointerup", (e) => this.up(e, c));
        c.addEventListener("pointercancel", (e) => this.up(e, c));
        c.addEventListener("pointerleave", () => this.hideCursor());
      }
      window.addEventListener("resize", () => this.place());
    }

    // A new image of w x h pixels (0, 0 while unknown): no edits.
    setImage(w, h) {
      this.w = w;
      this.h = h;
      this.drag = null;
      this.hints = new Hints();
      for (const { canvas } of this.panes) { canvas.width = w || 1; canvas.height = h || 1; }
      this.place();
      this.draw();
    }

    get ready() { return this.w > 0 && this.h > 0; }

    setTool(tool) {
      this.tool = tool;
      for (const { canvas } of this.panes) canvas.dataset.tool = tool;
      if (!tool.match(/keep|remove/)) this.hideCursor();
    }

    undo() {
      if (this.hints.empty) return;
      this.hints = new Hints(this.hints.actions.slice(0, -1));
      this.draw();
      this.onChange(this.hints);
    }

    reset() {
      if (this.hints.empty) return;
      this.hints = new Hints();
      this.draw();
      this.onChange(this.hints);
    }

    // Each overlay over its img: same place, same displayed size, to the fraction of a CSS pixel
    // (the frame is the overlay's containing block; it scrolls at full size).
    place() {
      for (const { frame, img, canvas } of this.panes) {
        const shown = this.ready && img.getAttribute("src") && img.naturalWidth > 0 && img.offsetWidth > 0;
        canvas.hidden = !shown;
        if (!shown) continue;
        const f = frame.getBoundingClientRect(), r = img.getBoundingClientRect();
        Object.assign(canvas.style, {
          left: r.left - f.left - frame.clientLeft + frame.scrollLeft + "px", top: r.top - f.top - frame.clientTop + frame.scrollTop + "px",
          width: r.width + "px", height: r.height + "px",
        });
      }
    }

    point(e, canvas) { return toImage(canvas.getBoundingClientRect(), this.w, this.h, e.clientX, e.clientY); }

    down(e, canvas) {
      if (!this.ready || !this.tool || e.button !== 0) return;
      e.preventDefault();
      canvas.setPointerCapture(e.pointerId);
      const p = this.point(e, canvas);
      if (this.tool === "box") this.drag = { kind: "box", a: p, b: p, canvas };
      else {
        const scale = this.w / canvas.getBoundingClientRect().width; // image pixels per CSS pixel
        this.drag = { kind: "stroke", mode: this.tool, width: Math.max(1, this.brush * scale), points: [p], canvas };
      }
      this.draw();
    }

    move(e, canvas) {
      if (this.tool === "keep" || this.tool === "remove") this.showCursor(e);
      const d = this.drag;
      if (!d || d.canvas !== canvas) return;
      const p = this.point(e, canvas);
      if (d.kind === "box") { d.b = p; this.draw(); return; }
      const last = d.points[d.points.length - 1];
      if (Math.hypot(p[0] - last[0], p[1] - last[1]) < 0.5) return;
      d.points.push(p);
      // Only the new segment, on every overlay: a full redraw per move is too slow on large images.
      for (const pane of this.panes) drawStroke(pane.canvas.getContext("2d"), { ...d, points: [last, p] }, OVERLAY[d.mode]);
    }

    up(e, canvas) {
      const d = this.drag;
      if (!d || d.canvas !== canvas) return;
      this.drag = null;
      let action = null; // a cancelled pointer or a click in box mode changes nothing
      if (e.type === "pointerup") {
        if (d.kind === "stroke") action = { kind: "stroke", mode: d.mode, width: d.width, points: d.points };
        else {
          const box = boxFromDrag(d.a, this.point(e, canvas), this.w, this.h);
          if (box) action = { kind: "box", box };
        }
      }
      if (action) this.hints = new Hints([...this.hints.actions, action]);
      this.draw();
      if (action) this.onChange(this.hints);
    }

    // Every overlay from the edits: strokes in their colours, the area outside the box dimmed.
    draw() {
      const d = this.drag;
      const box = d && d.kind === "box" ? boxFromDrag(d.a, d.b, this.w, this.h) : this.hints.box;
      for (const { canvas } of this.panes) {
        const ctx = canvas.getContext("2d");
        ctx.clearRect(0, 0, canvas.width, canvas.height);
        for (const s of this.hints.strokes) drawStroke(ctx, s, OVERLAY[s.mode]);
        if (d && d.kind === "stroke") drawStroke(ctx, d, OVERLAY[d.mode]);
        if (box) {
          const [x0, y0, x1, y1] = box;
          ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
          ctx.beginPath();
          ctx.rect(0, 0, canvas.width, canvas.height);
          ctx.rect(x0, y0, x1 - x0, y1 - y0);
          ctx.fill("evenodd");
          const rect = canvas.getBoundingClientRect();
          ctx.lineWidth = 2 * (rect.width ? this.w / rect.width : 1); // about 2 CSS pixels
          ctx.strokeStyle = "#2b6cb0";
          ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
        }
      }
    }

    showCursor(e) {
      Object.assign(this.cursor.style, { left: e.clientX + "px", top: e.clientY + "px", width: this.brush + "px", height: this.brush + "px" });
      this.cursor.dataset.mode = this.tool;
      this.cursor.hidden = false;
    }

    hideCursor() { this.cursor.hidden = true; }
  }

  const api = { MIN_BOX, toImage, boxFromDrag, Hints, HintEditor };
  Object.assign(root, api);
  if (typeof module !== "undefined" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
