#!/usr/bin/env bash
# Builds .device-extra/ in the checkout: the Debian 12 runtime + headers of loraslab's small
# dependencies (jansson, ISA-L, serial OpenBLAS with its gfortran runtime, cmocka) for the GPU
# machine, which has CUDA, NCCL, Open MPI and Python but none of these and no network.
# Run once here, then carry [".device-kit", ".device-extra"] (ci/device-test.sh uses both).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
ex=$root/.device-extra
grep -qx '/.device-extra/' "$root/.git/info/exclude" 2>/dev/null || echo '/.device-extra/' >>"$root/.git/info/exclude"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pk="libjansson4 libjansson-dev libisal2 libisal-dev libopenblas0-serial libopenblas-serial-dev
    libopenblas-dev libgfortran5 libcmocka0 libcmocka-dev"
(cd "$tmp" && apt-get download $pk >/dev/null 2>&1) ||
  { apt-get update >/dev/null && (cd "$tmp" && apt-get download $pk >/dev/null); }
for d in "$tmp"/*.deb; do dpkg -x "$d" "$tmp/x"; done
rm -rf "$ex"; mkdir -p "$ex/lib" "$ex/include" "$ex/lib/pkgconfig"
a=$tmp/x/usr/lib/x86_64-linux-gnu
cp -a "$a"/libjansson.so* "$a"/libisal.so* "$a"/libgfortran.so.5* "$a"/libcmocka.so* "$ex/lib/"
cp -a "$a"/openblas-serial/libopenblas*.so* "$ex/lib/" 2>/dev/null || true
cp -a "$a"/openblas-serial/libblas.so* "$a"/openblas-serial/libopenblas.so* "$ex/lib/" 2>/dev/null || true
ls "$ex/lib" | grep -q libopenblas || cp -a "$(find "$tmp/x" -name 'libopenblas*.so*' | head -1)" "$ex/lib/"
( cd "$ex/lib" && for f in libopenblas*.so.0; do [ -e "$f" ] && ln -sf "$f" libopenblas.so; done; true )
cp -a "$tmp"/x/usr/include/jansson*.h "$tmp"/x/usr/include/isa-l* "$tmp"/x/usr/include/cmocka*.h "$ex/include/"
cp -a "$tmp"/x/usr/include/x86_64-linux-gnu/openblas-serial/*.h "$ex/include/" 2>/dev/null ||
  cp -a "$(dirname "$(find "$tmp/x" -name cblas.h | head -1)")"/*.h "$ex/include/"
for pc in jansson cmocka; do
  f=$(find "$tmp/x" -name "$pc.pc" | head -1)
  sed "s|^prefix=.*|prefix=$ex|; s|^libdir=.*|libdir=\${prefix}/lib|; s|^includedir=.*|includedir=\${prefix}/include|" \
    "$f" >"$ex/lib/pkgconfig/$pc.pc"
done
cat >"$ex/env.sh" <<'ENV'
# Source on the GPU machine after .device-kit/env.sh.
ex=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for pc in "$ex"/lib/pkgconfig/*.pc; do sed -i "s|^prefix=.*|prefix=$ex|" "$pc"; done
export PKG_CONFIG_PATH=$ex/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export CPATH=$ex/include${CPATH:+:$CPATH} LIBRARY_PATH=$ex/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$ex/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CMAKE_PREFIX_PATH=$ex${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
ENV
du -sh "$ex"; ls "$ex/lib" "$ex/include" | head -30
