#!/usr/bin/env python3
"""Walk an lzop container: header fields, header checksum, every block's lengths and checksums
(of the stored bytes only; no LZO decompression here). Exits 1 on the first mismatch."""
import struct, sys, zlib
F_ADLER32_D, F_ADLER32_C, F_H_EXTRA_FIELD, F_CRC32_D, F_CRC32_C, F_H_FILTER, F_H_CRC32 = 0x1, 0x2, 0x40, 0x100, 0x200, 0x800, 0x1000
def main(path):
    b = open(path, 'rb').read(); p = 9
    assert b[:9] == b'\x89LZO\x00\r\n\x1a\n', 'magic'
    h0 = p
    version, libv = struct.unpack_from('>HH', b, p); p += 4
    need = None
    if version >= 0x0940: need, = struct.unpack_from('>H', b, p); p += 2
    method = b[p]; p += 1
    level = None
    if version >= 0x0940: level = b[p]; p += 1
    flags, = struct.unpack_from('>I', b, p); p += 4
    if flags & F_H_FILTER: p += 4
    mode, mtl = struct.unpack_from('>II', b, p); p += 8
    mth = 0
    if version >= 0x0940: mth, = struct.unpack_from('>I', b, p); p += 4
    nl = b[p]; p += 1; name = b[p:p+nl]; p += nl
    hck, = struct.unpack_from('>I', b, p)
    calc = (zlib.crc32(b[h0:p]) if flags & F_H_CRC32 else zlib.adler32(b[h0:p]))
    print(f'version={version:#x} lib={libv:#x} need={need and hex(need)} method={method} level={level} flags={flags:#010x} mode={mode:o} mtime={mth<<32|mtl} name={name!r} hdr_ck={hck:#x} ok={hck==calc} hdrlen={p+4}')
    if hck != calc: sys.exit(1)
    p += 4
    if flags & F_H_EXTRA_FIELD: raise SystemExit('extra field: not produced by lzop 1.04')
    n = 0; total = 0
    while True:
        ulen, = struct.unpack_from('>I', b, p); p += 4
        if ulen == 0: break
        clen, = struct.unpack_from('>I', b, p); p += 4
        dck = cck = None
        if flags & F_ADLER32_D: dck, = struct.unpack_from('>I', b, p); p += 4
        if flags & F_CRC32_D: p += 4
        if clen < ulen and flags & (F_ADLER32_C | F_CRC32_C): cck, = struct.unpack_from('>I', b, p); p += 4
        data = b[p:p+clen]; p += clen
        if clen == ulen and dck is not None and zlib.adler32(data) != dck: print('block', n, 'stored: adler32 mismatch'); sys.exit(1)
        if cck is not None and zlib.adler32(data) != cck: print('block', n, 'compressed adler32 mismatch'); sys.exit(1)
        n += 1; total += ulen
        if n <= 3: print(f' block {n-1}: ulen={ulen} clen={clen} adler32_d={dck and hex(dck)} adler32_c={cck and hex(cck)}')
    print(f'blocks={n} total_uncompressed={total} end_marker_at={p-4} file_len={len(b)} trailing={len(b)-p}')
main(sys.argv[1])
