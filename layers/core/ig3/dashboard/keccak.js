// Keccak-256 (the Ethereum variant: padding 0x01, not SHA3's 0x06) and EIP-55 address checksums.
// Why here: Sign-In with Ethereum (EIP-4361) requires the checksummed address in the message, and
// the dashboard loads nothing from a CDN. BigInt lanes: slow, but it hashes one 40-byte string.
(function (global) {
  "use strict";
  const MASK = (1n << 64n) - 1n;
  const RC = [
    0x0000000000000001n, 0x0000000000008082n, 0x800000000000808an, 0x8000000080008000n,
    0x000000000000808bn, 0x0000000080000001n, 0x8000000080008081n, 0x8000000000008009n,
    0x000000000000008an, 0x0000000000000088n, 0x0000000080008009n, 0x000000008000000an,
    0x000000008000808bn, 0x800000000000008bn, 0x8000000000008089n, 0x8000000000008003n,
    0x8000000000008002n, 0x8000000000000080n, 0x000000000000800an, 0x800000008000000an,
    0x8000000080008081n, 0x8000000000008080n, 0x0000000080000001n, 0x8000000080008008n];
  // Rotation offsets and the pi step's lane order, derived as the specification defines them.
  const ROT = new Array(25).fill(0n);
  const PI = [];
  (function () {
    let x = 1, y = 0;
    for (let t = 0; t < 24; t++) {
      ROT[x + 5 * y] = BigInt(((t + 1) * (t + 2) / 2) % 64);
      const nx = y, ny = (2 * x + 3 * y) % 5;
      x = nx; y = ny;
    }
    for (let i = 0; i < 25; i++) { const xx = i % 5, yy = Math.floor(i / 5); PI.push([xx, yy]); }
  })();
  const rotl = (v, n) => (n === 0n ? v : ((v << n) | (v >> (64n - n))) & MASK);

  function permute(s) {
    for (let round = 0; round < 24; round++) {
      const c = [0, 1, 2, 3, 4].map((x) => s[x] ^ s[x + 5] ^ s[x + 10] ^ s[x + 15] ^ s[x + 20]);
      for (let x = 0; x < 5; x++) {
        const d = c[(x + 4) % 5] ^ rotl(c[(x + 1) % 5], 1n);
        for (let y = 0; y < 25; y += 5) s[x + y] ^= d;
      }
      const b = new Array(25);
      for (const [x, y] of PI) b[y + 5 * ((2 * x + 3 * y) % 5)] = rotl(s[x + 5 * y], ROT[x + 5 * y]);
      for (let y = 0; y < 25; y += 5) {
        for (let x = 0; x < 5; x++) s[x + y] = b[x + y] ^ ((~b[((x + 1) % 5) + y] & MASK) & b[((x + 2) % 5) + y]);
      }
      s[0] ^= RC[round];
    }
  }

  function keccak256(bytes) {
    const rate = 136;
    const padded = new Uint8Array(Math.ceil((bytes.length + 1) / rate) * rate);
    padded.set(bytes);
    padded[bytes.length] ^= 0x01;
    padded[padded.length - 1] ^= 0x80;
    const s = new Array(25).fill(0n);
    for (let off = 0; off < padded.length; off += rate) {
      for (let i = 0; i < rate / 8; i++) {
        let lane = 0n;
        for (let k = 7; k >= 0; k--) lane = (lane << 8n) | BigInt(padded[off + 8 * i + k]);
        s[i] ^= lane;
      }
      permute(s);
    }
    const out = new Uint8Array(32);
    for (let i = 0; i < 4; i++) for (let k = 0; k < 8; k++) out[8 * i + k] = Number((s[i] >> BigInt(8 * k)) & 0xffn);
    return out;
  }

  function toChecksumAddress(address) {
    const hex = address.toLowerCase().replace(/^0x/, "");
    if (!/^[0-9a-f]{40}$/.test(hex)) throw new Error("not an address");
    const hash = keccak256(new TextEncoder().encode(hex));
    let out = "0x";
    for (let i = 0; i < 40; i++) {
      const nibble = (hash[i >> 1] >> (i % 2 === 0 ? 4 : 0)) & 0xf;
      out += nibble >= 8 ? hex[i].toUpperCase() : hex[i];
    }
    return out;
  }

  global.ig3Keccak = { keccak256, toChecksumAddress };
})(window);
