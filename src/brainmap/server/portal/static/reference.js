// The reference page: Neuroglancer's view (position, zoom, 3-D orientation, layout) written back to this page's
// URL as it changes (history.replaceState), so a reload or a shared link opens the same view.
(function () {
  "use strict";
  const frame = document.getElementById("neuroglancer");
  if (!frame) return;
  const fixed = (v, digits) => String(Number(Number(v).toFixed(digits)));
  function write(viewer) {
    const s = viewer.state.toJSON();
    if (!Array.isArray(s.layers) || !s.layers.length) return;  // not yet the page's state
    const url = new URL(location.href);
    const p = url.searchParams;
    if (Array.isArray(s.position) && s.position.length === 3) {
      p.set("lr", fixed(s.position[0], 1));  // Neuroglancer's x = LR, y = DV, z = AP (um)
      p.set("dv", fixed(s.position[1], 1));
      p.set("ap", fixed(s.position[2], 1));
    }
    if (s.crossSectionScale) p.set("zoom", fixed(s.crossSectionScale, 4));
    if (s.projectionScale) p.set("pzoom", fixed(s.projectionScale, 1));
    if (Array.isArray(s.projectionOrientation)) p.set("orient", s.projectionOrientation.map((v) => fixed(v, 5)).join(","));
    if (typeof s.layout === "string") p.set("layout", s.layout);
    const next = url.pathname + "?" + p.toString();
    if (next !== location.pathname + location.search) history.replaceState(null, "", next);
    frame.dataset.written = String(Number(frame.dataset.written || 0) + 1);
  }
  function attach() {
    const viewer = frame.contentWindow && frame.contentWindow.viewer;
    if (!viewer || !viewer.state || !viewer.state.changed) {
      setTimeout(attach, 200);
      return;
    }
    let timer = 0;
    viewer.state.changed.add(() => {
      clearTimeout(timer);
      timer = setTimeout(() => write(viewer), 250);
    });
  }
  attach();
})();
