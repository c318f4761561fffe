#!/usr/bin/env bash
# Make a private CA and a server certificate for the centre's Mosquitto (TLS listener).
#
#   scripts/mosquitto/make-certs.sh OUT_DIR SERVER_NAME [EXTRA_SAN...]
#
# OUT_DIR gets ca.key, ca.crt (copy ca.crt to every car: mqtt.tls.ca_file), server.key, server.crt.
# SERVER_NAME is the host name the cars connect to (it goes in the certificate's subjectAltName, which is
# what the cars check); EXTRA_SAN are more names or IP addresses (e.g. 127.0.0.1 for tests).
# An existing ca.key in OUT_DIR is reused, so re-running renews the server certificate under the same CA.
# Keep ca.key offline.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 OUT_DIR SERVER_NAME [EXTRA_SAN...]" >&2
    exit 2
fi
out=$1
name=$2
shift 2
days=${DAYS:-825}
mkdir -p "$out"
umask 077

san="DNS:${name}"
for extra in "$@"; do
    if [[ $extra =~ ^[0-9.]+$ || $extra == *:* ]]; then
        san+=",IP:${extra}"
    else
        san+=",DNS:${extra}"
    fi
done

if [[ ! -f "$out/ca.key" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=patrol centre CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$out/server.key" -out "$out/server.csr" \
    -subj "/CN=${name}" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$out/server.ext" -out "$out/server.crt" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext"
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "CA: $out/ca.crt  server: $out/server.crt ($san)"
