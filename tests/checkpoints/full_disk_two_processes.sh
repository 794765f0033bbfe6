#!/usr/bin/env bash
# Run inside `unshare -rm` (a private mount namespace): a 2-process RLOO run whose output_dir is a tmpfs with room for
# one checkpoint only, then the same run resumed once the tmpfs has grown. Writes rc and stderr of both to REPORT_DIR.
#   full_disk_two_processes.sh PYTHON WORKER MODEL_DIR MOUNT_POINT REPORT_DIR PORT1 PORT2
set -u
python=$1 worker=$2 model=$3 disk=$4 report=$5
launch() {
  ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 timeout 400 "$python" -m accelerate.commands.launch --multi_gpu \
    --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no --main_process_port "$1" \
    "$worker" "$model" "$disk/run" "$2"
}
mkdir -p "$disk" && mount -t tmpfs -o size=1600k tmpfs "$disk" || exit 3
launch "$6" 3 >"$report/first.out" 2>"$report/first.err"
echo $? >"$report/first.rc"
ls "$disk/run" >"$report/after_first.ls"
"$python" -c "import sys; from trl_basics import checkpoints; print(checkpoints.find_resumable_checkpoint(sys.argv[1]))" \
  "$disk/run" >"$report/resumable" 2>/dev/null
mount -o remount,size=64m tmpfs "$disk"
launch "$7" resume >"$report/second.out" 2>"$report/second.err"
echo $? >"$report/second.rc"
ls "$disk/run" >"$report/after_second.ls"
umount "$disk"
