// A subscribe-only MQTT 3.1.1 client over WebSocket (subprotocol "mqtt"), for the dashboard in AWS,
// where the live data comes from IoT Core (custom authorizer: the API token in the query string and
// the MQTT password) instead of the local front's Server-Sent Events.
//
// Why our own: the page loads nothing from elsewhere and has no build step; subscribing needs only
// CONNECT, SUBSCRIBE, PUBLISH (in, QoS 0/1 with PUBACK) and PINGREQ — a hundred lines.
(function (global) {
  "use strict";
  const enc = new TextEncoder();

  function varint(n) {
    const out = [];
    do {
      let b = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) b |= 0x80;
      out.push(b);
    } while (n > 0);
    return out;
  }

  function str(s) {
    const b = enc.encode(s);
    return [b.length >> 8, b.length & 0xff, ...b];
  }

  function packet(type, body) { return new Uint8Array([type, ...varint(body.length), ...body]); }

  function connect({ url, clientId, username, password, topics, keepaliveS = 30, onMessage, onState }) {
    const ws = new WebSocket(url, ["mqtt"]);
    ws.binaryType = "arraybuffer";
    let buf = new Uint8Array(0);
    let ping = null;
    let packetId = 1;
    const state = (s, detail) => { if (onState) onState(s, detail); };

    ws.onopen = () => {
      let flags = 0x02; // clean session
      const payload = [...str(clientId)];
      if (username != null) { flags |= 0x80; payload.push(...str(username)); }
      if (password != null) { flags |= 0x40; payload.push(...str(password)); }
      ws.send(packet(0x10, [...str("MQTT"), 4, flags, keepaliveS >> 8, keepaliveS & 0xff, ...payload]));
    };
    ws.onmessage = (ev) => {
      const chunk = new Uint8Array(ev.data);
      const joined = new Uint8Array(buf.length + chunk.length);
      joined.set(buf);
      joined.set(chunk, buf.length);
      buf = joined;
      for (;;) {
        // Fixed header: type byte + remaining length (1-4 bytes); wait for the whole packet.
        let len = 0, mult = 1, i = 1, complete = false;
        while (i < buf.length && i <= 4) {
          const b = buf[i++];
          len += (b & 0x7f) * mult;
          mult *= 128;
          if ((b & 0x80) === 0) { complete = true; break; }
        }
        if (!complete || buf.length < i + len) return;
        handle(buf[0], buf.subarray(i, i + len));
        buf = buf.slice(i + len);
      }
    };
    ws.onclose = (ev) => { clearInterval(ping); state("closed", ev.code); };
    ws.onerror = () => state("error");

    function handle(header, body) {
      const type = header >> 4;
      if (type === 2) { // CONNACK
        if (body[1] !== 0) { state("refused", body[1]); ws.close(); return; }
        const subs = [];
        for (const t of topics) subs.push(...str(t), 1);
        const id = packetId++;
        ws.send(packet(0x82, [id >> 8, id & 0xff, ...subs]));
        ping = setInterval(() => ws.send(new Uint8Array([0xc0, 0])), (keepaliveS * 1000) / 2);
      } else if (type === 9) { // SUBACK: 0x80 per refused filter
        if ([...body.subarray(2)].some((code) => code === 0x80)) { state("refused", "subscribe"); ws.close(); return; }
        state("live");
      } else if (type === 3) { // PUBLISH
        const qos = (header >> 1) & 3;
        const tlen = (body[0] << 8) | body[1];
        const topic = new TextDecoder().decode(body.subarray(2, 2 + tlen));
        let off = 2 + tlen;
        if (qos > 0) {
          ws.send(new Uint8Array([0x40, 2, body[off], body[off + 1]])); // PUBACK
          off += 2;
        }
        onMessage(topic, body.subarray(off));
      }
    }
    return { close: () => { clearInterval(ping); try { ws.send(new Uint8Array([0xe0, 0])); } catch (e) { /* closed */ } ws.close(); } };
  }

  global.ig3Mqtt = { connect };
})(window);
