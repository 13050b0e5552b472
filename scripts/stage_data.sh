#!/usr/bin/env bash
# Stage offline copies of MNIST and CIFAR-10 from ../shared/data (or $1) into data/, for machines without internet.
set -euo pipefail
src=${1:-../shared/data}
cd "$(dirname "$0")/.."
if [ ! -d "$src" ]; then echo "no $src: nothing to stage (torchvision will download on first use)"; exit 0; fi
mkdir -p data/MNIST/raw
for f in "$src"/mnist/*.gz; do
  out=data/MNIST/raw/$(basename "$f" .gz)
  [ -f "$out" ] || gunzip -c "$f" > "$out"
done
if [ -f "$src/cifar10-jpg.tar.gz" ] && [ ! -d data/cifar10-jpg ]; then tar xzf "$src/cifar10-jpg.tar.gz" -C data; fi
echo "staged: $(ls data/MNIST/raw | wc -l) MNIST files, CIFAR-10 JPEGs: $(ls data/cifar10-jpg 2>/dev/null | tr '\n' ' ')"
