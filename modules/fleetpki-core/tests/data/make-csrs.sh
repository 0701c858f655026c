#!/bin/sh
# Makes the CSRs of tests/worker.rs that rcgen cannot build (an RSA key under 2048 bits, an
# ECDSA P-256 key signed with SHA-512). Run once from this directory; the output is committed.
set -eu
cn=i-0123456789abcdef0
san=subjectAltName=DNS:node1.fleet.internal,IP:127.0.0.1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl genrsa -out "$tmp/rsa1024.key" 1024 2>/dev/null
openssl req -new -key "$tmp/rsa1024.key" -subj "/CN=$cn" -addext "$san" -sha256 -out rsa-1024.csr.pem
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/p256.key"
openssl req -new -key "$tmp/p256.key" -subj "/CN=$cn" -addext "$san" -sha512 -out ecdsa-p256-sha512.csr.pem
