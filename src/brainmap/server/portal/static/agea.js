// AGEA seed picker: the coronal or sagittal annotation slice with the seed's correlation map over it; a click
// sets the seed; the plane's choice reloads the page with plane= in its URL.
(function () {
  "use strict";
  const canvas = document.getElementById("agea-atlas");
  if (!canvas) return;
  const form = document.getElementById("search-form");
  const seedInput = form.querySelector("input[name=seed_point]");
  const slider = document.getElementById("slice-position");
  const at = document.getElementById("slice-at");
  const planeSelect = document.getElementById("agea-plane");
  const plane = canvas.dataset.plane || "coronal";
  const sagittal = plane === "sagittal";
  const ctx = canvas.getContext("2d");
  const RES = 100; // um per slice pixel
  function seed() {
    const parts = (seedInput.value || "").split(",").map(Number);
    return parts.length === 3 && parts.every(Number.isFinite) ? parts : null;
  }
  function load(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("could not load " + src));
      img.src = src;
    });
  }
  async function draw() {
    const position = Number(slider.value);
    at.textContent = String(position);
    const atlas = await load(`/viewer/slice/annotation.png?plane=${plane}&resolution=100&position=${position}`);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 0.55;
    ctx.drawImage(atlas, 0, 0);
    ctx.globalAlpha = 1;
    const s = seed();
    if (s && Math.abs((sagittal ? s[2] : s[0]) - position) < RES) {
      try {
        const map = await load("/portal/agea/map.png?set=" + encodeURIComponent(canvas.dataset.set) +
                               `&plane=${plane}&seed_point=` + s.join(","));
        ctx.drawImage(map, 0, 0);
      } catch (e) {
        canvas.dataset.error = String(e); // no map at this seed (the page names why): the atlas and seed stay
      }
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(Math.floor((sagittal ? s[0] : s[2]) / RES) - 1, Math.floor(s[1] / RES) - 1, 3, 3);
    }
    canvas.dataset.drawn = String(position);
  }
  canvas.addEventListener("click", (event) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left) / box.width * canvas.width);
    const y = Math.floor((event.clientY - box.top) / box.height * canvas.height);
    const position = Number(slider.value);
    const across = (x + 0.5) * RES;
    const dv = (y + 0.5) * RES;
    seedInput.value = (sagittal ? [across, dv, position] : [position, dv, across]).join(",");
    form.submit();
  });
  planeSelect.addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.set("plane", planeSelect.value);
    location.assign(url.toString());
  });
  slider.addEventListener("change", draw);
  draw().catch((e) => { canvas.dataset.error = String(e); });
})();
