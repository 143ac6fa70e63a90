// The dashboard page: draws the snapshots the server pushes (server-sent events); never asks a cluster
// itself. Every text from a job (names, logs, errors) goes in as textContent, never as markup.
"use strict";
const TOKEN = document.querySelector('meta[name="braas-token"]').content;
const openLogs = new Set();  // the jobs whose log tail the user opened, kept across redraws

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function bar(done, total, label, extraClass, held) {
  const share = n => total && n != null ? Math.min(100, (100 * n) / total) : 0;
  const fill = el("div");
  fill.style.width = share(done) + "%";
  const node = el("div", {class: "bar " + (extraClass || ""), title: label}, fill);
  if (held) {  // a group's cluster: the frames it holds, not rendered yet, after those it rendered
    const waiting = el("div", {class: "held"});
    waiting.style.width = Math.min(100 - share(done), share(held)) + "%";
    node.append(waiting);
  }
  node.append(el("span", {}, label));
  return node;
}

function chart(timings) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 300 70");
  svg.setAttribute("preserveAspectRatio", "none");
  if (!timings.length) return svg;
  const most = Math.max(...timings.map(t => t[1]), 0.001);
  const width = 300 / timings.length;
  timings.forEach(([frame, seconds], i) => {
    const rect = document.createElementNS(ns, "rect");
    const height = Math.max(1, (60 * seconds) / most);
    rect.setAttribute("x", i * width + 0.5);
    rect.setAttribute("y", 70 - height);
    rect.setAttribute("width", Math.max(1, width - 1));
    rect.setAttribute("height", height);
    const title = document.createElementNS(ns, "title");
    title.textContent = `frame ${frame}: ${seconds.toFixed(2)} s`;
    rect.append(title);
    svg.append(rect);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 2); label.setAttribute("y", 9);
  label.textContent = `s/frame, max ${most.toFixed(1)}`;
  svg.append(label);
  return svg;
}

async function act(job, action, button) {
  button.disabled = true;
  say(`${action} ${job}…`);
  try {
    const answer = await fetch(`/api/jobs/${encodeURIComponent(job)}/${action}`,
                               {method: "POST", headers: {"X-Braas-Token": TOKEN}, credentials: "same-origin"});
    const body = await answer.json();
    say(body.ok ? `${action} ${job}: done` : `${action} ${job}: ${body.error}`);
  } catch (error) {
    say(`${action} ${job}: ${error}`);
  } finally {
    button.disabled = false;
  }
}

function say(text) { document.getElementById("said").textContent = text; }

function jobCard(job) {
  const done = job.frames_done == null ? "?" : job.frames_done;
  const title = el("h3", {}, el("span", {class: "name"}, job.job), el("span", {class: "state " + job.state}, job.state),
                   el("span", {class: "meta"}, `${job.scene} · ${job.presets.join(", ")} · frames ${job.frames_spec}` +
                                               (job.rounds ? ` · round ${job.rounds + 1}` : "")));
  const left = el("div", {class: "left"});
  left.append(bar(job.frames_done, job.frames_total, `${done}/${job.frames_total} frames`, "total"));
  for (const part of job.clusters) {
    const label = `${part.preset}: ${part.frames_done == null ? "?" : part.frames_done}/${part.frames_total}` +
                  (part.error ? ` (${part.error.message})` : ` ${part.state}`);
    const b = bar(part.frames_done, part.frames_total, label, "part");
    b.setAttribute("data-preset", part.preset);
    left.append(b);
  }
  left.append(buttonsOf(job, ["cancel", "resubmit", "download"]));
  return el("article", {class: "job", "data-job": job.job}, title, ...framesAndLogs(job, left));
}

function tasksLine(tasks) {
  return tasks.length ? el("div", {class: "meta tasks"}, tasks.map(t => `${t.task}: ` +
    (t.frame == null ? "" : `frame ${t.frame} `) + (t.percent == null ? "…" : `${Math.round(t.percent)}%`)).join(" · "))
    : null;
}

function buttonsOf(entry, actions) {
  const buttons = el("div", {class: "buttons"});
  for (const action of actions) {
    const button = el("button", {class: action, type: "button", disabled: !entry.can[action]}, action);
    button.addEventListener("click", () => act(entry.job, action, button));
    buttons.append(button);
  }
  return buttons;
}

// The parts a job and a group share: the frame grid, seconds per frame, the log tails, the latest frame.
function framesAndLogs(job, left) {
  left.append(tasksLine(job.tasks) || "");
  const grid = el("div", {class: "grid"});
  for (const frame of job.frames) {
    const where = frame.where == null ? "" : frame.where === "pool" ? ": not handed out yet"
                : frame.where === "held" ? `: held by ${frame.preset}` : frame.preset ? `: ${frame.where} on ${frame.preset}`
                : `: ${frame.where}`;
    const cell = el("div", {class: "cell" + (frame.rendered ? " rendered" : ""), title: `frame ${frame.frame}${where}`,
                            "data-frame": String(frame.frame)});
    if (frame.preset) cell.setAttribute("data-preset", frame.preset);
    cell.append(frame.image ? el("img", {src: frame.image, alt: `frame ${frame.frame}`, loading: "lazy"})
                            : String(frame.frame));
    grid.append(cell);
  }
  left.append(grid, chart(job.timings));
  const logs = el("details", {class: "logs", open: openLogs.has(job.job)},
                  el("summary", {}, `newest logs (${Object.keys(job.logs).length})` +
                                    (job.nodes.length ? ` · nodes ${job.nodes.join(", ")}` : "")));
  logs.addEventListener("toggle", () => logs.open ? openLogs.add(job.job) : openLogs.delete(job.job));
  for (const [name, text] of Object.entries(job.logs)) logs.append(el("div", {class: "meta"}, name), el("pre", {}, text));
  left.append(logs);
  const latest = el("div", {class: "latest"});
  latest.append(job.latest ? el("img", {src: job.latest, alt: job.latest_is_preview ? "preview" : "latest frame"})
                           : (job.frames_done ? "download to see the frames" : "no frame yet"));
  if (job.latest_is_preview) latest.append(el("div", {class: "meta"}, "preview (download for full size)"));
  return [left, latest];
}

function seconds(value) { return value >= 100 ? `${Math.round(value)} s` : `${value.toFixed(1)} s`; }

// A group: one film over several clusters, its member jobs folded in (their frames, logs and previews).
function groupCard(g) {
  const title = el("h3", {}, el("span", {class: "name"}, g.job), el("span", {class: "state " + g.state}, g.state),
                   el("span", {class: "meta"}, `${g.scene} · group over ${g.presets.join(", ")} · frames ${g.frames_spec}`));
  const left = el("div", {class: "left"});
  left.append(bar(g.frames_done, g.frames_total, `${g.frames_done}/${g.frames_total} frames`, "total"));
  for (const c of g.clusters) {
    const pace = c.seconds_per_frame ? `${seconds(c.seconds_per_frame)}/frame` : "pace not measured yet";
    const queue = c.queue_seconds ? ` · queue wait ${seconds(c.queue_seconds)}` : "";
    const label = `${c.preset}: rendered ${c.frames_done}, holds ${c.frames_held} · ${pace}${queue} · ` +
                  (c.error ? `not answering (${c.error})` : c.state);
    const b = bar(c.frames_done, g.frames_total, label, "part", c.frames_held);
    b.setAttribute("data-preset", c.preset);
    left.append(b);
  }
  left.append(el("div", {class: "meta pool"}, g.pool ? `${g.pool} frame(s) not handed out yet: given to the ` +
                 "clusters as they render, while this page (or braas-hpc wait) is open" : "every frame handed out"));
  if (g.missing) left.append(el("div", {class: "meta"}, `given up (lost too often): frames ${g.missing}`));
  if (g.moves.length) left.append(el("div", {class: "moves"}, ...g.moves.map(line => el("div", {class: "meta"}, line))));
  const buttons = buttonsOf(g, ["cancel", "download"]);
  buttons.append(el("span", {class: "meta no-resubmit"},
                    "no Resubmit: the group gives frames a cluster lost to its clusters again by itself"));
  left.append(buttons);
  return el("article", {class: "job group", "data-job": g.job, "data-group": g.job}, title,
            ...framesAndLogs(g, left));
}

function sessionsTable(sessions) {
  if (!sessions.length) return el("p", {class: "empty"}, "No interactive sessions.");
  const table = el("table", {}, el("tr", {}, ...["session", "cluster", "job", "state", "node", "command", "port on node",
                                                 "tunnel here", "fps"].map(h => el("th", {}, h))));
  for (const s of sessions) {
    const cells = [s.session, s.preset, s.job, s.state, s.node || "–", s.command || (s.error || "–"),
                   s.port == null ? "–" : String(s.port), s.tunnel || "–", s.fps == null ? "–" : s.fps.toFixed(1)];
    table.append(el("tr", {"data-session": s.session}, ...cells.map(c => el("td", {}, c))));
  }
  return table;
}

function draw(snapshot) {
  const jobs = document.getElementById("jobs");
  const entries = [...snapshot.jobs.map((job, i) => [job.created, i, jobCard(job)]),
                   ...(snapshot.groups || []).map((g, i) => [g.created, i, groupCard(g)])];
  entries.sort((a, b) => (b[0] - a[0]) || (b[1] - a[1]));  // newest first
  jobs.replaceChildren(...(entries.length ? entries.map(e => e[2]) : [el("p", {class: "empty"}, "No jobs yet.")]));
  document.getElementById("sessions").replaceChildren(sessionsTable(snapshot.sessions));
  const when = snapshot.refreshed ? new Date(snapshot.refreshed * 1000).toLocaleTimeString() : "–";
  const unreachable = snapshot.unreachable.length ? ` · not answering: ${snapshot.unreachable.join(", ")}` : "";
  document.getElementById("refreshed").textContent = `clusters asked at ${when}${unreachable}`;
}

function listen() {
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onmessage = message => draw(JSON.parse(message.data));
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
}

listen();
