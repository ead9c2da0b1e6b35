"use strict";
(function () {
  var KEY = "proxyd-admin-token";
  var m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    try { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); } catch (e) {}
    history.replaceState(null, "", location.pathname + location.search);
  }
  var token = null;
  try { token = sessionStorage.getItem(KEY); } catch (e) {}
  function auth() { return token ? { Authorization: "Bearer " + token } : {}; }
  function $(id) { return document.getElementById(id); }
  function say(text) { var s = $("status") || $("login-error"); if (s) { s.textContent = text; } }

  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("asc");
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        table.dataset.sortCol = col; table.dataset.sortAsc = asc ? "1" : "0";
        sortRows(table);
      });
    });
  }
  function sortRows(table) {
    if (table.dataset.sortCol === undefined) { return; }
    var col = +table.dataset.sortCol, asc = table.dataset.sortAsc === "1";
    var num = table.tHead.rows[0].cells[col].dataset.type === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.filter.call(body.rows, function (r) { return !r.classList.contains("empty"); });
    rows.sort(function (a, b) {
      var x = a.cells[col], y = b.cells[col];
      var c = num ? (+x.dataset.v) - (+y.dataset.v) : x.textContent.localeCompare(y.textContent);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function cell(tr, text, value, cls) {
    var td = tr.insertCell();
    td.textContent = text;
    if (value !== undefined) { td.dataset.v = value; }
    if (cls) { td.className = cls; }
    return td;
  }
  function bytes(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0, v = n;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return i ? v.toFixed(1) + " " + u[i] : n + " B";
  }
  function secs(s) {
    if (s < 60) { return s.toFixed(1) + "s"; }
    if (s < 3600) { return Math.floor(s / 60) + "m" + ("0" + Math.floor(s % 60)).slice(-2) + "s"; }
    if (s < 86400) { return Math.floor(s / 3600) + "h" + ("0" + Math.floor(s % 3600 / 60)).slice(-2) + "m"; }
    return Math.floor(s / 86400) + "d" + ("0" + Math.floor(s % 86400 / 3600)).slice(-2) + "h";
  }
  function fill(table, items, columns, empty) {
    var body = table.tBodies[0];
    while (body.rows.length) { body.deleteRow(0); }
    items.forEach(function (item) { columns(body.insertRow(), item); });
    if (!items.length) {
      var tr = body.insertRow(); tr.className = "empty";
      var td = tr.insertCell(); td.colSpan = table.tHead.rows[0].cells.length; td.textContent = empty;
    }
    sortRows(table);
  }
  function getJSON(path) {
    return fetch(path, { headers: auth(), cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error(path + ": " + r.status); }
      return r.json();
    });
  }
  function refresh() {
    var filter = $("role-filter");
    var role = filter && filter.value ? "role=" + encodeURIComponent(filter.value) + "&" : "";
    Promise.all([getJSON("/tunnels?" + role + "limit=200"), getJSON("/refusals?limit=50")]).then(function (r) {
      var t = r[0], f = r[1];
      $("tunnel-count").textContent = t.total;
      fill($("tunnel-table"), t.tunnels, function (tr, x) {
        cell(tr, x.role || "(none)"); cell(tr, x.client); cell(tr, x.rhost, undefined, "host"); cell(tr, x.raddr);
        cell(tr, secs(x.ageSeconds), x.ageSeconds); cell(tr, bytes(x.bytesOut), x.bytesOut);
        cell(tr, bytes(x.bytesIn), x.bytesIn); cell(tr, secs(x.secondsSinceLastActivity), x.secondsSinceLastActivity);
        cell(tr, x.decision + (x.rule ? ": " + x.rule : ""));
      }, "no open tunnels");
      fill($("refusal-table"), f.recent, function (tr, x) {
        cell(tr, x.time); cell(tr, x.role || "(none)"); cell(tr, x.host, undefined, "host"); cell(tr, x.address || "");
        cell(tr, String(x.status), x.status); cell(tr, x.reason, undefined, "reason").title = x.kind; cell(tr, x.rule || "");
      }, "no refusals since start");
      var counts = $("refusal-counts");
      while (counts.firstChild) { counts.removeChild(counts.firstChild); }
      Object.keys(f.counts_since_start).forEach(function (k) {
        var n = f.counts_since_start[k];
        if (!n) { return; }
        var li = document.createElement("li"), s = document.createElement("span"), b = document.createElement("b");
        s.textContent = k; b.textContent = n; li.appendChild(s); li.appendChild(document.createTextNode(" ")); li.appendChild(b);
        counts.appendChild(li);
      });
      say("updated " + new Date().toLocaleTimeString());
    }).catch(function (e) { say("refresh failed: " + e.message); });
  }
  function wire() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);
    var filter = $("role-filter");
    if (filter) {
      filter.form.addEventListener("submit", function (e) { e.preventDefault(); refresh(); });
      filter.addEventListener("change", refresh);
    }
    if ($("tunnel-table")) { setInterval(refresh, 5000); }
  }
  function open() {
    fetch(location.pathname + location.search, { headers: auth(), cache: "no-store" }).then(function (r) {
      if (r.status === 401) {
        try { sessionStorage.removeItem(KEY); } catch (e) {}
        token = null;
        throw new Error("the token was refused");
      }
      return r.text();
    }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.querySelector("main");
      var header = doc.querySelector("header");
      if (!fresh || !header) { throw new Error("unexpected answer"); }
      document.querySelector("main").replaceWith(document.adoptNode(fresh));
      document.querySelector("header").replaceWith(document.adoptNode(header));
      document.title = doc.title;
      wire();
    }).catch(function (e) { say(e.message); });
  }
  var login = $("login");
  if (login) {
    login.addEventListener("submit", function (e) {
      e.preventDefault();
      token = $("token").value.trim();
      try { sessionStorage.setItem(KEY, token); } catch (x) {}
      open();
    });
    if (token) { open(); }
  } else {
    wire();
  }
})();
