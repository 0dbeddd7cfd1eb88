// The lockstep dashboard: plain DOM, no framework. Every value goes in with textContent, never
// innerHTML, so nothing the server returns can become markup.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  let csrf = null;
  let environment = document.getElementById("environment-name").textContent;
  let rollbackJob = null;

  function byId(id) { return document.getElementById(id); }

  function text(id, value) { byId(id).textContent = value === null || value === undefined || value === "" ? "—" : String(value); }

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (className) { td.className = className; }
    row.appendChild(td);
    return td;
  }

  function size(bytes) {
    if (bytes === null || bytes === undefined) { return ""; }
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function when(iso) { return iso ? iso.replace("T", " ").replace("Z", "") : ""; }

  function showError(message) {
    const element = byId("page-error");
    element.textContent = message || "";
    element.hidden = !message;
  }

  async function call(method, path, body) {
    const options = { method: method, credentials: "same-origin", headers: {} };
    if (method !== "GET") {
      options.headers["X-CSRF-Token"] = csrf || "";
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    const response = await fetch(path, options);
    if (response.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
    const document_ = await response.json();
    if (!response.ok) {
      throw new Error((document_.error || response.statusText) + (document_.hint ? ": " + document_.hint : ""));
    }
    return document_;
  }

  function healthText(health) {
    const names = Object.keys(health || {});
    if (names.length === 0) { return ""; }
    return names.map(function (name) {
      const result = health[name];
      return name + ": " + (result.ok ? "healthy" : "unhealthy (" + result.reason + ")");
    }).join("; ");
  }

  function renderEnvironment(status) {
    environment = status.environment;
    text("active-slot", status.active_slot);
    text("active-release", status.release);
    text("active-commit", status.commit);
    text("active-since", when(status.since));
    const active = status.active_slot ? status.slots[status.active_slot] : null;
    const health = active ? healthText(active.health) : "";
    text("active-health", health || (active ? "no health checks ran yet" : ""));
    const healthElement = byId("active-health");
    healthElement.className = health.indexOf("unhealthy") >= 0 ? "bad" : (health ? "ok" : "");
    text("lock-state", status.lock.state + (status.lock.detail ? ": " + status.lock.detail : ""));
    const repository = status.repository;
    text("repository-state", repository.state + (repository.detail ? ": " + repository.detail : "") +
      (repository.read_at ? " (read " + when(repository.read_at) + ")" : ""));
    text("environment-url", status.workers_only ? "workers only, no URL (no component has a port)" : status.url);
    const rows = byId("slot-rows");
    rows.replaceChildren();
    Object.keys(status.slots).forEach(function (slot) {
      const document_ = status.slots[slot];
      const row = document.createElement("tr");
      cell(row, slot + (slot === status.active_slot ? " (active)" : ""));
      cell(row, document_.release);
      cell(row, document_.commit ? document_.commit.slice(0, 12) : "", "id");
      cell(row, document_.processes.map(function (process) {
        return process.component + (process.running ? " up" : " down") + (process.crash_looped ? " (crash loop)" : "");
      }).join(", "));
      cell(row, healthText(document_.health));
      rows.appendChild(row);
    });
  }

  function renderTimeline(timeline) {
    const rows = byId("timeline-rows");
    rows.replaceChildren();
    timeline.entries.forEach(function (entry) {
      const row = document.createElement("tr");
      row.className = "entry-" + entry.type;
      row.dataset.type = entry.type;
      row.dataset.outcome = entry.outcome || "";
      cell(row, when(entry.time));
      cell(row, entry.type);
      const bad = ["failed", "rolled-back", "interrupted"].indexOf(entry.outcome) >= 0;
      cell(row, entry.outcome, bad ? "bad" : "");
      cell(row, entry.release || entry.id, "id");
      const details = [];
      if (entry.message) { details.push(entry.message); }
      if (entry.duration !== null && entry.duration !== undefined) { details.push(entry.duration + " s"); }
      if (entry.size !== undefined) { details.push(size(entry.size)); }
      if (entry.data_restored) { details.push("data restored"); }
      if (entry.reason) { details.push(entry.reason); }
      cell(row, details.join(" · "));
      rows.appendChild(row);
    });
  }

  function renderSnapshots(listing) {
    const rows = byId("snapshot-rows");
    rows.replaceChildren();
    listing.snapshots.forEach(function (snapshot) {
      const row = document.createElement("tr");
      cell(row, snapshot.short_id, "id");
      cell(row, when(snapshot.time));
      cell(row, snapshot.kind);
      cell(row, size(snapshot.size));
      cell(row, snapshot.seconds === null ? "" : snapshot.seconds + " s");
      cell(row, snapshot.commit ? snapshot.commit.slice(0, 12) : "", "id");
      cell(row, snapshot.verified, snapshot.verification_ok === false ? "bad" : (snapshot.verification_ok ? "ok" : ""));
      cell(row, snapshot.message);
      rows.appendChild(row);
    });
  }

  function renderTargets(listing) {
    // Rebuilt only when the list changes, so a choice being made is not reset by the refresh.
    const select = byId("rollback-to");
    const key = JSON.stringify(listing.targets.map(function (target) { return target.release; }));
    if (select.dataset.key === key) { return; }
    const chosen = select.value;
    select.dataset.key = key;
    select.replaceChildren();
    const previous = document.createElement("option");
    previous.value = "";
    previous.textContent = "the previous release" + (listing.default ? " (" + listing.default + ")" : "");
    select.appendChild(previous);
    listing.targets.forEach(function (target) {
      const option = document.createElement("option");
      option.value = target.release;
      option.textContent = target.release + (target.commit ? " · " + target.commit.slice(0, 12) : "") +
        " · " + when(target.time) + (target.message ? " · " + target.message : "");
      select.appendChild(option);
    });
    select.value = listing.targets.some(function (target) { return target.release === chosen; }) ? chosen : "";
  }

  async function refresh() {
    try {
      const results = await Promise.all([
        call("GET", "/api/environment"), call("GET", "/api/timeline"), call("GET", "/api/snapshots"),
        call("GET", "/api/rollback/targets"),
      ]);
      renderEnvironment(results[0]);
      renderTimeline(results[1]);
      renderSnapshots(results[2]);
      renderTargets(results[3]);
      text("refreshed", "updated " + new Date().toLocaleTimeString());
      showError("");
    } catch (error) {
      showError("Cannot load the dashboard data: " + error.message);
    }
  }

  function updateConfirmButton() {
    const preview = byId("rollback-preview");
    byId("rollback-button").disabled = preview.dataset.possible !== "true" ||
      byId("rollback-confirm").value !== environment || rollbackJob !== null;
  }

  async function previewRollback() {
    const withData = byId("rollback-with-data").checked;
    const to = byId("rollback-to").value;
    const button = byId("rollback-preview-button");
    button.disabled = true;
    try {
      const preview = await call("GET", "/api/rollback/preview?with_data=" + (withData ? "1" : "0") +
        (to ? "&to=" + encodeURIComponent(to) : ""));
      const element = byId("rollback-preview");
      element.hidden = false;
      element.dataset.possible = preview.possible ? "true" : "false";
      element.dataset.withData = withData ? "true" : "false";
      element.dataset.to = to;
      byId("rollback-target").textContent = preview.target_release
        ? "From " + preview.current_release + " back to " + preview.target_release +
          (preview.target_commit ? " (commit " + preview.target_commit.slice(0, 12) + ")" : "") +
          (withData ? ", with the data of snapshot " + (preview.data_snapshot || "—") : ", code only")
        : "";
      const list = byId("rollback-discarded");
      list.replaceChildren();
      (preview.discarded || []).forEach(function (line) {
        const item = document.createElement("li");
        item.textContent = line;
        list.appendChild(item);
      });
      byId("rollback-discarded-block").hidden = !withData || !preview.possible;
      const impossible = byId("rollback-impossible");
      impossible.hidden = preview.possible;
      impossible.textContent = preview.possible ? "" : "Cannot roll back: " + preview.reason;
      byId("rollback-expected").textContent = environment;
      byId("rollback-confirm").value = "";
      updateConfirmButton();
    } catch (error) {
      showError("Cannot preview the rollback: " + error.message);
    } finally {
      button.disabled = false;
    }
  }

  async function pollRollback() {
    if (rollbackJob === null) { return; }
    try {
      const job = await call("GET", "/api/rollback/" + encodeURIComponent(rollbackJob));
      byId("rollback-result").hidden = false;
      byId("rollback-state").textContent = job.state;
      byId("rollback-state").className = job.state === "failed" ? "bad" : (job.state === "succeeded" ? "ok" : "");
      byId("rollback-exit").textContent = job.exit_code === null ? "" : "(exit code " + job.exit_code + ")";
      byId("rollback-output").textContent = job.output;
      if (job.state === "running") {
        window.setTimeout(pollRollback, 1000);
      } else {
        rollbackJob = null;
        byId("rollback-preview").hidden = true;
        updateConfirmButton();
        refresh();
      }
    } catch (error) {
      showError("Cannot follow the rollback: " + error.message);
      window.setTimeout(pollRollback, 2000);
    }
  }

  async function startRollback(event) {
    event.preventDefault();
    const withData = byId("rollback-preview").dataset.withData === "true";
    const to = byId("rollback-preview").dataset.to || null;  // what the preview showed, not a later choice
    const confirmation = byId("rollback-confirm").value;
    if (confirmation !== environment) { return; }
    byId("rollback-button").disabled = true;
    try {
      const job = await call("POST", "/api/rollback", { confirm: confirmation, with_data: withData, to: to });
      rollbackJob = job.id;
      byId("rollback-result").hidden = false;
      byId("rollback-state").textContent = job.state;
      byId("rollback-output").textContent = "";
      pollRollback();
    } catch (error) {
      showError("The rollback did not start: " + error.message);
      updateConfirmButton();
    }
  }

  async function logout() {
    try { await call("POST", "/logout", {}); } catch (error) { /* going to the login page either way */ }
    window.location.assign("/login");
  }

  async function start() {
    try {
      const session = await call("GET", "/api/session");
      csrf = session.csrf;
      environment = session.environment;
    } catch (error) {
      showError("Cannot start the dashboard: " + error.message);
    }
    byId("rollback-preview-button").addEventListener("click", previewRollback);
    byId("rollback-with-data").addEventListener("change", function () { byId("rollback-preview").hidden = true; });
    byId("rollback-to").addEventListener("change", function () { byId("rollback-preview").hidden = true; });
    byId("rollback-confirm").addEventListener("input", updateConfirmButton);
    byId("rollback-form").addEventListener("submit", startRollback);
    byId("logout-button").addEventListener("click", logout);
    await refresh();
    window.setInterval(refresh, REFRESH_MS);
  }

  start();
})();
