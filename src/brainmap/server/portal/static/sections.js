// Section image viewer: Deep Zoom tiles (OpenSeadragon), the annotation's boundaries over them, the structure
// under the cursor, and a click that finds the same point in the reference and in the other data sets.
(function () {
  "use strict";
  const box = document.getElementById("osd");
  const imageId = box.dataset.image;
  const width = Number(box.dataset.width);
  const others = box.dataset.others;
  const hover = document.getElementById("hover");
  const clicked = document.getElementById("clicked");
  const links = document.getElementById("sync-links");
  let labels = null;
  const viewer = OpenSeadragon({
    element: box, prefixUrl: "/portal/static/vendor/openseadragon/images/",
    tileSources: "/portal/dz/" + imageId + ".dzi", showNavigator: true, maxZoomPixelRatio: 8,
    gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false,
  });
  window.brainmapViewer = viewer;
  viewer.addOnceHandler("open", () => {
    viewer.addTiledImage({
      tileSource: { type: "image", url: "/portal/sections/image/" + imageId + "/boundaries.png" },
      x: 0, y: 0, width: 1, opacity: 0.9,
      success: () => { box.dataset.boundaries = "drawn"; },
    });
    if (box.dataset.markX !== undefined) mark(Number(box.dataset.markX), Number(box.dataset.markY));
    restoreView();
    viewer.addHandler("animation-finish", writeView);
    box.dataset.ready = "1";
  });
  // The view (zoom, and the image pixel at the centre) in the page's URL: a reload or a shared link opens it.
  function restoreView() {
    const q = new URLSearchParams(location.search);
    const zoom = Number(q.get("zoom")), cx = Number(q.get("cx")), cy = Number(q.get("cy"));
    if (!(zoom > 0) || !Number.isFinite(cx) || !Number.isFinite(cy) || q.get("cx") === null) return;
    const item = viewer.world.getItemAt(0);
    viewer.viewport.zoomTo(zoom, null, true);
    viewer.viewport.panTo(item.imageToViewportCoordinates(cx, cy), true);
  }
  function writeView() {
    const item = viewer.world.getItemAt(0);
    if (!item) return;
    const centre = item.viewportToImageCoordinates(viewer.viewport.getCenter(true));
    const url = new URL(location.href);
    url.searchParams.set("image", imageId);
    url.searchParams.set("zoom", String(Number(viewer.viewport.getZoom(true).toFixed(4))));
    url.searchParams.set("cx", centre.x.toFixed(1));
    url.searchParams.set("cy", centre.y.toFixed(1));
    history.replaceState(null, "", url.pathname + "?" + url.searchParams.toString());
    box.dataset.written = String(Number(box.dataset.written || 0) + 1);
  }
  document.getElementById("show-boundaries").addEventListener("change", (e) => {
    const overlay = viewer.world.getItemAt(1);
    if (overlay) overlay.setOpacity(e.target.checked ? 0.9 : 0);
  });
  fetch("/portal/sections/image/" + imageId + "/labels.json").then((r) => r.json()).then((body) => {
    if (body.success) labels = body;
  });
  function pixelOf(position) {
    const vp = viewer.viewport.pointFromPixel(position);
    const image = viewer.world.getItemAt(0).viewportToImageCoordinates(vp);
    return image;
  }
  function structureAt(x, y) {
    if (!labels) return null;
    const col = Math.floor(x / labels.step), row = Math.floor(y / labels.step);
    if (col < 0 || row < 0 || col >= labels.cols || row >= labels.rows) return null;
    const id = labels.labels[row * labels.cols + col];
    return id ? [id].concat(labels.structures[String(id)]) : [0, "", "outside the brain"];
  }
  function mark(x, y) {
    const dot = document.createElement("div");
    dot.id = "mark";
    dot.style.cssText = "width:14px;height:14px;border-radius:50%;border:3px solid #ff2bd6;margin:-7px 0 0 -7px;";
    viewer.addOverlay({ element: dot, location: viewer.viewport.imageToViewportCoordinates(x, y) });
  }
  new OpenSeadragon.MouseTracker({
    element: viewer.canvas,
    moveHandler: (event) => {
      if (!viewer.world.getItemAt(0)) return;
      const p = pixelOf(event.position);
      const s = structureAt(p.x, p.y);
      hover.textContent = "pixel " + Math.round(p.x) + ", " + Math.round(p.y) +
        (s ? " · " + (s[0] ? s[1] + " (" + s[2] + ")" : s[2]) : "");
      hover.dataset.structure = s ? s[1] : "";
    },
  }).setTracking(true);
  viewer.addHandler("canvas-click", async (event) => {
    if (!event.quick) return;
    const p = pixelOf(event.position);
    const x = Math.round(p.x), y = Math.round(p.y);
    clicked.textContent = "pixel " + x + ", " + y + " …";
    links.innerHTML = "";
    try {
      const ref = await (await fetch("/api/v2/image_to_reference/" + imageId + ".json?x=" + x + "&y=" + y)).json();
      const point = ref.msg.image_to_reference;
      const s = structureAt(x, y);
      clicked.textContent = "pixel " + x + ", " + y + " → reference AP " + point.x.toFixed(0) + ", DV " +
        point.y.toFixed(0) + ", LR " + point.z.toFixed(0) + " µm" + (s && s[0] ? " (" + s[1] + ")" : "");
      const item = (href, text, id) => {
        const li = document.createElement("li"); const a = document.createElement("a");
        a.href = href; a.textContent = text; if (id) a.id = id; li.appendChild(a); links.appendChild(li);
      };
      item("/reference?ap=" + point.x.toFixed(0) + "&dv=" + point.y.toFixed(0) + "&lr=" + point.z.toFixed(0),
           "the same point in the reference atlas", "to-reference");
      if (others) {
        const sync = await (await fetch("/api/v2/image_to_image/" + imageId + ".json?x=" + x + "&y=" + y +
                                        "&section_data_set_ids=" + others)).json();
        for (const row of sync.msg) {
          const r = row.image_sync;
          item("/sections/" + r.section_data_set_id + "?image=" + r.section_image_id + "&x=" + r.x.toFixed(1) +
               "&y=" + r.y.toFixed(1), "data set " + r.section_data_set_id + ", section " + r.section_number +
               " (pixel " + r.x.toFixed(0) + ", " + r.y.toFixed(0) + ")");
        }
      }
      links.dataset.count = String(links.children.length);
    } catch (e) {
      clicked.textContent = "could not sync this point: " + e;
    }
  });
})();
