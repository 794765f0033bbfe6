#!/usr/bin/env bash
# REINFORCE++ with generation on a separate vLLM server (TRL's server mode). Needs GPUs and `pip install vllm`.
#
# GPU 0 serves generations; GPUs 1-7 train. TRL syncs the policy weights to the server after every update.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}

CUDA_VISIBLE_DEVICES=0 trl vllm-serve --model "$MODEL" &
SERVER=$!
trap 'kill $SERVER' EXIT

CUDA_VISIBLE_DEVICES=1,2,3,4,5,6,7 accelerate launch --config_file examples/accelerate/multi_gpu.yaml \
    --num_processes 7 \
    -m trl_basics.cli train reinforce_pp \
    --model_name_or_path "$MODEL" \
    --dataset_name prompts.jsonl --reward_funcs my_rewards:score \
    --use_vllm true --vllm_mode server \
    --output_dir trl-basics-output/reinforce_pp-vllm
