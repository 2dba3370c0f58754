// AGEA seed picker: the coronal annotation slice with the seed's correlation map over it; a click sets the seed.
(function () {
  "use strict";
  const canvas = document.getElementById("agea-atlas");
  if (!canvas) return;
  const form = document.getElementById("search-form");
  const seedInput = form.querySelector("input[name=seed_point]");
  const ap = document.getElementById("ap");
  const apText = document.getElementById("slice-ap");
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
    const position = Number(ap.value);
    apText.textContent = String(position);
    const atlas = await load("/viewer/slice/annotation.png?plane=coronal&resolution=100&position=" + position);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 0.55;
    ctx.drawImage(atlas, 0, 0);
    ctx.globalAlpha = 1;
    const s = seed();
    if (s && Math.abs(s[0] - position) < RES) {
      const map = await load("/portal/agea/map.png?set=" + encodeURIComponent(canvas.dataset.set) +
                             "&seed_point=" + s.join(","));
      ctx.drawImage(map, 0, 0);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(Math.floor(s[2] / RES) - 1, Math.floor(s[1] / RES) - 1, 3, 3);
    }
    canvas.dataset.drawn = String(position);
  }
  canvas.addEventListener("click", (event) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left) / box.width * canvas.width);
    const y = Math.floor((event.clientY - box.top) / box.height * canvas.height);
    seedInput.value = [Number(ap.value), (y + 0.5) * RES, (x + 0.5) * RES].join(",");
    form.submit();
  });
  ap.addEventListener("change", draw);
  draw().catch((e) => { canvas.dataset.error = String(e); });
})();
