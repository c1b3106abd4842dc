#!/usr/bin/env bash
# Fetch real photographs for training: the Debian package plasma-workspace-wallpapers (KDE wallpapers, mostly
# photographs, free licences listed in each wallpaper's metadata.json), unpacked WITHOUT installing it (no root).
# For each wallpaper the largest image is kept, under DEST/hr/<name>.<ext>; then, if this build has `esrgan prepare`,
# the images are cut into 480x480 sub-images (step 240) as the paper did with DIV2K, in DEST/sub.
#
#   scripts/fetch_wallpapers.sh [DEST]        (default DEST: ../data/wallpapers beside the repository, outside git)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here/../data/wallpapers}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
work="$dest/.deb"
mkdir -p "$work"

cd "$work"
if ! ls plasma-workspace-wallpapers_*.deb >/dev/null 2>&1; then
    apt-get download plasma-workspace-wallpapers
fi
deb="$(ls plasma-workspace-wallpapers_*.deb | head -n 1)"
rm -rf "$work/root"
dpkg-deb -x "$deb" "$work/root"

mkdir -p "$dest/hr"
count=0
for folder in "$work"/root/usr/share/wallpapers/*/; do
    name="$(basename "$folder")"
    images="$folder/contents/images"
    [ -d "$images" ] || continue
    # largest file = highest resolution (the folder holds one image per screen size)
    best="$(ls -S "$images" | head -n 1)"
    [ -n "$best" ] || continue
    cp "$images/$best" "$dest/hr/$name.${best##*.}"
    count=$((count + 1))
done
rm -rf "$work/root"
echo "wrote $count wallpapers to $dest/hr"

esrgan="$here/.venv/bin/esrgan"
if "$esrgan" prepare --help >/dev/null 2>&1; then
    "$esrgan" prepare "$dest/hr" "$dest/sub" --size 480 --step 240
    echo "sub-images in $dest/sub"
else
    echo "no 'esrgan prepare' in this build: train on $dest/hr directly (random crops of the full images)"
fi
