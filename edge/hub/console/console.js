// The reference hub's console: devices, requests, and one live stream played through MSE.
// Everything the box sent (registry names, locations) is shown with textContent, never as HTML.
"use strict";

(function () {
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  const state = {
    frames: 0, playing: false, error: null, status: "idle", codecs: null, fromStart: null, devicesLoaded: 0,
  };
  window.consoleState = state;

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  let devices = [];
  let current = null; // {session, camera, ws, mediaSource, sourceBuffer, queue, ended}

  function setStatus(text, isError) {
    state.status = text;
    if (isError) state.error = text;
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function api(method, path, body) {
    const init = { method, headers: { "X-Console-Token": token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const reply = await resp.json();
    if (!resp.ok) throw new Error((reply.error || resp.status) + ": " + (reply.detail || ""));
    return reply;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function cameraLabel(cam) {
    const where = [cam.name, cam.location].filter((s) => typeof s === "string" && s).join(", ");
    return `${cam.id}${where ? ": " + where : ""} (${cam.consent || "?"})`;
  }

  async function loadDevices() {
    try {
      const reply = await api("GET", "/api/devices");
      devices = reply.devices;
      const list = $("devices");
      list.replaceChildren();
      for (const d of devices) {
        const item = el("li", undefined, d.connected ? "" : "offline");
        item.append(el("strong", d.device_id), el("span", d.connected ? " connected" : " not connected"));
        const cams = el("ul", undefined, "cams");
        for (const cam of d.cameras) cams.append(el("li", cameraLabel(cam)));
        if (!d.cameras.length) cams.append(el("li", "no registry yet"));
        item.append(cams);
        list.append(item);
      }
      const select = $("device");
      const chosen = select.value;
      select.replaceChildren(...devices.map((d) => new Option(d.device_id, d.device_id)));
      if (devices.some((d) => d.device_id === chosen)) select.value = chosen;
      fillCameras();
      const reasons = $("reason");
      if (!reasons.options.length) reasons.replaceChildren(...reply.reasons.map((r) => new Option(r, r)));
      state.devicesLoaded = devices.length;
    } catch (e) {
      setStatus("cannot list devices: " + e.message, true);
    }
  }

  function fillCameras() {
    const d = devices.find((x) => x.device_id === $("device").value);
    const cams = d ? d.cameras : [];
    $("camera").replaceChildren(...cams.map((c) => new Option(cameraLabel(c), String(c.id))));
  }

  function utcSeconds(input) {
    return input.value ? Math.floor(Date.parse(input.value + "Z") / 1000) : null;
  }

  async function sendRequest(event) {
    event.preventDefault();
    stopPlaying();
    state.error = null;
    const mode = document.querySelector('input[name="mode"]:checked').value;
    const body = {
      device: $("device").value,
      cameras: [Number($("camera").value)],
      mode,
      max_dur: Number($("max-dur").value),
      case: $("case").value,
      reason: $("reason").value,
      sub: $("officer").value,
      incident: { kind: $("kind").value },
    };
    if (mode === "recorded") {
      body.from = utcSeconds($("from"));
      body.to = utcSeconds($("to"));
    }
    setStatus("sending the request…");
    try {
      const reply = await api("POST", "/api/request", body);
      if (!reply.accepted) {
        setStatus(`refused: ${reply.code}`, true);
        return;
      }
      setStatus(`accepted, session ${reply.session}`);
      play(reply.session, reply.cameras[0]);
    } catch (e) {
      setStatus("request failed: " + e.message, true);
    }
  }

  function play(session, cam) {
    const url = `ws://${location.host}${cam.live}?token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const c = { session, camera: cam.camera, ws, mediaSource: null, sourceBuffer: null, queue: [], ended: false };
    current = c;
    state.fromStart = cam.from_start;
    $("stop").disabled = false;
    ws.onmessage = (msg) => {
      if (current !== c) return;
      if (typeof msg.data === "string") onText(c, JSON.parse(msg.data));
      else {
        c.queue.push(msg.data);
        pump(c);
      }
    };
    ws.onclose = () => {
      if (current !== c) return;
      c.ended = true;
      $("stop").disabled = true;
      pump(c);
    };
  }

  function onText(c, message) {
    if (message.codecs !== undefined) {
      state.codecs = message.codecs;
      if (!window.MediaSource || !MediaSource.isTypeSupported(message.mime)) {
        setStatus(`this browser cannot play ${message.mime}`, true);
        c.ws.close();
        return;
      }
      const ms = new MediaSource();
      c.mediaSource = ms;
      ms.addEventListener("sourceopen", () => {
        c.sourceBuffer = ms.addSourceBuffer(message.mime);
        c.sourceBuffer.addEventListener("updateend", () => afterAppend(c));
        c.sourceBuffer.addEventListener("error", () => setStatus("the browser refused the video", true));
        pump(c);
      });
      video.src = URL.createObjectURL(ms);
      video.play().catch(() => {});
      setStatus(`playing ${message.codecs}`);
    } else if (message.end !== undefined) {
      setStatus(`ended: ${message.end}`);
    } else if (message.error !== undefined) {
      setStatus(`stream error: ${message.error} ${message.detail || ""}`, true);
    }
  }

  // Appends one piece at a time: a SourceBuffer takes no append while it is updating.
  function pump(c) {
    const sb = c.sourceBuffer;
    if (!sb || sb.updating || c.mediaSource.readyState !== "open") return;
    if (c.queue.length) {
      try {
        sb.appendBuffer(c.queue.shift());
      } catch (e) {
        setStatus("append failed: " + e.message, true);
      }
    } else if (c.ended) {
      c.mediaSource.endOfStream();
    }
  }

  function afterAppend(c) {
    const b = c.sourceBuffer.buffered;
    if (b.length) {
      // A late joiner's video starts at the first keyframe it got, not at 0: jump there.
      if (video.currentTime < b.start(0)) video.currentTime = b.start(0);
      // Keep about 30 s behind the playhead; a long session would otherwise fill the buffer.
      if (video.currentTime - b.start(0) > 60 && !c.queue.length) {
        c.sourceBuffer.remove(b.start(0), video.currentTime - 30);
        return;
      }
      if (video.paused && !c.ended) video.play().catch(() => {});
    }
    pump(c);
  }

  function stopPlaying() {
    if (current && current.ws.readyState <= WebSocket.OPEN) current.ws.close();
    current = null;
    $("stop").disabled = true;
  }

  async function stop() {
    if (!current) return;
    const c = current;
    $("stop").disabled = true;
    try {
      const reply = await api("POST", `/api/stop/${c.session}/${c.camera}`);
      setStatus(reply.stopped ? "stopped" : "the stream had already ended");
    } catch (e) {
      setStatus("stop failed: " + e.message, true);
    }
  }

  function poll() {
    const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    state.frames = quality ? quality.totalVideoFrames : 0;
    state.playing = !video.paused && !video.ended && video.readyState >= 2 && state.frames > 0;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("refresh").addEventListener("click", loadDevices);
    $("device").addEventListener("change", fillCameras);
    $("request-form").addEventListener("submit", sendRequest);
    $("stop").addEventListener("click", stop);
    video.addEventListener("error", () => setStatus("video error: " + (video.error && video.error.message), true));
    setInterval(poll, 200);
    if (!token) setStatus("no token: open the console with the URL `edge hub serve` printed", true);
    else loadDevices();
  });
})();
