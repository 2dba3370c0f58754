// brainmap viewer: plain JavaScript over the public API (RMA queries) and the viewer's slice pictures.
"use strict";

const $ = (id) => document.getElementById(id);
const EXTENT_UM = { coronal: 13200, horizontal: 8000, sagittal: 11400 };

async function rma(query) {
  const response = await fetch("/api/v2/data/query.json?criteria=" + encodeURIComponent(query));
  const body = await response.json();
  if (!body.success) throw new Error(body.msg);
  return body.msg;
}

function status(text) { $("status").textContent = text; }

function describe(ds) {
  const product = (ds.products || []).map((p) => p.abbreviation).join(",");
  const gene = (ds.genes || []).map((g) => g.acronym).join(",");
  const injections = ((ds.specimen && ds.specimen.injections) || [])
    .map((i) => i.structure && i.structure.acronym).filter(Boolean);
  const what = gene || (injections.length ? "injection " + [...new Set(injections)].join(",") : "");
  return `${ds.id} · ${product} · ${what}${ds.failed ? " (failed)" : ""}`;
}

async function loadDataSets() {
  const rows = await rma("model::SectionDataSet,rma::include,products,genes,specimen(injections(structure))," +
                         "rma::options[num_rows$eq500][order$eq'id']");
  const select = $("dataset");
  select.innerHTML = "";
  if (!rows.length) return false;
  for (const ds of rows) {
    const option = document.createElement("option");
    option.value = ds.id;
    option.textContent = describe(ds);
    option.dataset.product = (ds.products || []).map((p) => p.id).join(",");
    select.appendChild(option);
  }
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("id");
  if (fromHash) select.value = fromHash;
  return true;
}

function showEmpty() {
  // No data set in the database: the atlas still draws; say how to load data.
  for (const id of ["dataset", "volume", "overlay"]) $(id).disabled = true;
  $("overlay").checked = false;
  $("title").textContent = "No data sets loaded";
  $("summary").textContent = "No data sets loaded: run `brainmap load DIR --data-dir DATA_DIR` (e.g. " +
                             "`brainmap load brainmap-demo/specimens`), then reload this page.";
  updatePictures();
}

async function loadVolumes() {
  const id = $("dataset").value;
  const select = $("volume");
  select.innerHTML = "";
  const response = await fetch(`/viewer/volumes/${encodeURIComponent(id)}.json`);
  const body = await response.json();
  if (!response.ok || !Array.isArray(body.msg)) {
    throw new Error(`no volumes for data set ${id}: ${typeof body.msg === "string" ? body.msg : response.status}`);
  }
  const names = [...new Set((body.msg || []).map((v) => v.name))];
  for (const name of names) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    select.appendChild(option);
  }
  const preferred = ["projection_density", "energy"].find((n) => names.includes(n));
  if (preferred) select.value = preferred;
}

function isConnectivity() {
  const option = $("dataset").selectedOptions[0];
  return option && option.dataset.product.split(",").includes("5");
}

async function loadUnionizes() {
  const id = $("dataset").value;
  const thead = $("unionize").querySelector("thead");
  const tbody = $("unionize").querySelector("tbody");
  tbody.innerHTML = "";
  let rows, columns;
  if (isConnectivity()) {
    columns = ["projection_density", "projection_energy", "normalized_projection_volume"];
    rows = await rma(`model::ProjectionStructureUnionize,rma::criteria,[section_data_set_id$eq${id}]` +
                     "[is_injection$eqfalse][hemisphere_id$eq3],rma::include,structure," +
                     "rma::options[order$eq'projection_density$desc'][num_rows$eq40]");
  } else {
    columns = ["expression_energy", "expression_density"];
    rows = await rma(`model::StructureUnionize,rma::criteria,[section_data_set_id$eq${id}],` +
                     "rma::include,structure,rma::options[order$eq'expression_energy$desc'][num_rows$eq40]");
  }
  thead.innerHTML = "<tr><th>structure</th>" + columns.map((c) => `<th>${c.replaceAll("_", " ")}</th>`).join("") +
                    "</tr>";
  $("title").textContent = `Structures of data set ${id}`;
  $("summary").textContent = rows.length ? `top ${rows.length} by ${columns[0].replaceAll("_", " ")} (both hemispheres)`
                                         : "no structure unionize rows for this data set";
  for (const row of rows) {
    const tr = document.createElement("tr");
    const s = row.structure || {};
    const name = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "#" + (s.color_hex_triplet || "ccc");
    name.appendChild(swatch);
    name.appendChild(document.createTextNode(`${s.acronym || row.structure_id} — ${s.name || ""}`));
    tr.appendChild(name);
    for (const c of columns) {
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = row[c] == null ? "" : Number(row[c]).toPrecision(4);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

function updatePictures() {
  const plane = $("plane").value;
  const resolution = $("resolution").value;
  const slider = $("position");
  slider.max = EXTENT_UM[plane] - Number(resolution);
  slider.step = resolution;
  if (Number(slider.value) > Number(slider.max)) slider.value = slider.max;
  const position = slider.value;
  $("position-label").textContent = `${position} µm`;
  const common = `plane=${plane}&position=${position}&resolution=${resolution}`;
  $("annotation").src = `/viewer/slice/annotation.png?${common}`;
  const signal = $("signal");
  const volume = $("volume").value;
  if ($("overlay").checked && volume) {
    signal.style.display = "";
    signal.src = `/viewer/slice/${$("dataset").value}.png?${common}&volume=${encodeURIComponent(volume)}`;
  } else {
    signal.style.display = "none";
  }
  if ($("dataset").value) location.hash = `id=${$("dataset").value}`;
}

async function selectDataSet() {
  status("loading…");
  try {
    await loadVolumes();
    updatePictures();
    await loadUnionizes();
    status("");
  } catch (error) {
    status(String(error));
  }
}

$("signal").addEventListener("error", () => status("no grid volume to overlay for this data set"));
$("signal").addEventListener("load", () => status(""));
for (const id of ["plane", "resolution", "position", "volume", "overlay"]) {
  $(id).addEventListener(id === "position" ? "input" : "change", updatePictures);
}
$("dataset").addEventListener("change", selectDataSet);

loadDataSets().then((any) => (any ? selectDataSet() : showEmpty())).catch((error) => status(String(error)));
