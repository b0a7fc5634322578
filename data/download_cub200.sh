#!/usr/bin/env bash
# Download CUB-200-2011 (about 1.1 GB) into data/, extract it and write the
# zero-shot lists data/CUB200_train.txt (classes 1-100) and data/CUB200_val.txt
# (classes 101-200). Safe to interrupt and re-run: unfinished work lives under
# .partial-* names and finished steps are skipped.
set -euo pipefail

URL="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
MD5="97eceeb196236b17998738112f37df78"
PYTHON="${PYTHON:-python}"

cd "$(dirname "$0")"

if [ ! -d CUB_200_2011 ]; then
    if [ ! -f CUB_200_2011.tgz ]; then
        echo "downloading $URL"
        curl -fL -C - -o .partial-CUB_200_2011.tgz "$URL"  # -C - resumes a cut download
        mv .partial-CUB_200_2011.tgz CUB_200_2011.tgz
    fi
    if command -v md5sum >/dev/null; then
        echo "$MD5  CUB_200_2011.tgz" | md5sum -c --quiet - \
            || { echo "error: CUB_200_2011.tgz is corrupt; delete it and run again" >&2; exit 1; }
    fi
    echo "extracting CUB_200_2011.tgz"
    rm -rf .partial-CUB_200_2011
    mkdir .partial-CUB_200_2011
    tar -xzf CUB_200_2011.tgz -C .partial-CUB_200_2011 CUB_200_2011
    mv .partial-CUB_200_2011/CUB_200_2011 CUB_200_2011
    rmdir .partial-CUB_200_2011
fi

"$PYTHON" split.py --cub_dir CUB_200_2011 --out_dir .
