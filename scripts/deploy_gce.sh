#!/usr/bin/env bash
# usage: scripts/deploy_gce.sh [--dry-run] [--update] [options]
#
# Creates a Container-Optimized OS VM that runs the leafnet serve image with the GCE profile: the proxy on
# port 8080 (leafnet/profiles/proxy/gce.Caddyfile) checks a bearer token the VM reads from Secret Manager,
# TorchServe (leafnet/profiles/torchserve/gce.properties) listens on loopback behind it. With --domain, an
# HTTPS load balancer with a Google-managed certificate fronts the VM and the firewall admits Google's load
# balancers only; without, a firewall rule opens port 8080 to SOURCE_RANGES (plain HTTP: for private
# networks). --update points an existing VM at another image and restarts the server instead. With
# --gpu-type, the VM gets that NVIDIA GPU, COS installs its driver at boot and the GPU image serves on it.
# docs/security.md explains the choices, docs/gpu.md the GPU ones.
# Every option can come from the environment variable beside it; an option beats the variable.
#
#   --project P            PROJECT         Google Cloud project (required)
#   --zone Z               ZONE            VM zone (us-central1-a)
#   --region R             REGION          Artifact Registry region (the zone's region)
#   --instance NAME        INSTANCE        VM name (leafnet-serve)
#   --image URI            IMAGE           image to run (default: the one .github/workflows/image.yml pushes,
#                                          REGION-docker.pkg.dev/PROJECT/REPOSITORY/leafnet-serve:IMAGE_TAG;
#                                          with --gpu-type, leafnet-serve-gpu:IMAGE_TAG, built by hand: docs/gpu.md)
#   --repository NAME      REPOSITORY      Artifact Registry repository (leafnet)
#   --image-tag TAG        IMAGE_TAG       image tag: a commit SHA, or main for main's latest (main)
#   --machine-type TYPE    MACHINE_TYPE    (n2-standard-2: 2 vCPUs with AVX-512 VNNI for the int8 model; with
#                                          --gpu-type, g2-standard-4 for nvidia-l4, else n1-standard-4)
#   --boot-disk-size SIZE  BOOT_DISK_SIZE  (20GB; 50GB with --gpu-type: the GPU image and the driver)
#   --gpu-type TYPE        GPU_TYPE        NVIDIA GPU model, e.g. nvidia-l4 or nvidia-tesla-t4: a GPU VM (none)
#   --gpu N                GPU_COUNT       GPUs attached to an N1 machine type (1); accelerator-optimized types
#                                          (G2, A2, A3: g2-standard-4 has one L4) come with theirs
#   --gpu-driver VERSION   GPU_DRIVER      driver COS installs at boot: default (COS's for its release), latest,
#                                          or a version (default)
#   --source-ranges CIDRS  SOURCE_RANGES   who may reach port 8080, e.g. 203.0.113.0/24 (required to create
#                                          the firewall rule without --domain; wider than /8 needs --allow-anywhere)
#   --domain NAME          DOMAIN          serve https://NAME through a load balancer with a managed certificate
#   --token-secret NAME    TOKEN_SECRET    Secret Manager secret holding the bearer token(s), one per line
#                                          (leafnet-serve-token); the VM's service account reads it
#   --allow-anywhere                       accept --source-ranges wider than a /8, 0.0.0.0/0 included (plain HTTP)
#   --network NET          NETWORK         VPC network of the VM and the rule (default)
#   --firewall-rule NAME   FIREWALL_RULE   (leafnet-serve-8080)
#   --service-account SA   VM_SERVICE_ACCOUNT  identity of the VM (Compute Engine's default if empty); it
#                                          needs roles/artifactregistry.reader to pull the image
#   --no-firewall                          do not create the firewall rule (it exists already)
#   --update                               existing VM: set its image and restart the server
#   --dry-run                              print the gcloud commands, one per line, and run nothing
#   -h, --help
set -euo pipefail
here=${BASH_SOURCE[0]%/*}
[[ ${BASH_SOURCE[0]} == */* ]] || here=.
# shellcheck source=scripts/lib/deploy.sh
source "$here/lib/deploy.sh" # --help prints the comment above; work from the repository root

OPTIONS=(--project:PROJECT --zone:ZONE --region:REGION --instance:INSTANCE --image:IMAGE --repository:REPOSITORY
  --image-tag:IMAGE_TAG --machine-type:MACHINE_TYPE --boot-disk-size:BOOT_DISK_SIZE --source-ranges:SOURCE_RANGES
  --network:NETWORK --firewall-rule:FIREWALL_RULE --service-account:VM_SERVICE_ACCOUNT --domain:DOMAIN
  --token-secret:TOKEN_SECRET --gpu-type:GPU_TYPE --gpu:GPU_COUNT --gpu-driver:GPU_DRIVER)
SWITCHES=(--no-firewall:NO_FIREWALL --update:UPDATE --allow-anywhere:ALLOW_ANYWHERE)
parse_options "$@"

require PROJECT --project
ZONE=${ZONE:-us-central1-a}
REGION=${REGION:-${ZONE%-*}}
INSTANCE=${INSTANCE:-leafnet-serve}
REPOSITORY=${REPOSITORY:-leafnet}
IMAGE_TAG=${IMAGE_TAG:-main}
IMAGE_NAME=leafnet-serve
gpu=()  # instances create's GPU flags
if [ -n "${GPU_TYPE:-}" ]; then
  IMAGE_NAME=leafnet-serve-gpu
  if [ "$GPU_TYPE" = nvidia-l4 ]; then
    MACHINE_TYPE=${MACHINE_TYPE:-g2-standard-4}  # L4s come with G2 machine types only
  fi
  MACHINE_TYPE=${MACHINE_TYPE:-n1-standard-4}  # T4, V100, P4, P100: attached to N1 machine types
  BOOT_DISK_SIZE=${BOOT_DISK_SIZE:-50GB}
  GPU_DRIVER=${GPU_DRIVER:-default}
  if [[ $MACHINE_TYPE =~ ^(a[0-9]+x?|g[0-9]+)- ]]; then
    # Accelerator-optimized series: the machine type fixes the GPU model and count.
    [ -z "${GPU_COUNT:-}" ] ||
      die "--machine-type $MACHINE_TYPE comes with its own GPUs: pick their number by machine type, not --gpu"
  else
    GPU_COUNT=${GPU_COUNT:-1}
    require_count GPU_COUNT --gpu
    gpu+=(--accelerator "type=$GPU_TYPE,count=$GPU_COUNT")
  fi
  # GPU VMs cannot live-migrate: Compute Engine stops them for host maintenance.
  gpu+=(--maintenance-policy TERMINATE)
elif [ -n "${GPU_COUNT:-}" ] || [ -n "${GPU_DRIVER:-}" ]; then
  die "--gpu and --gpu-driver need --gpu-type"
fi
MACHINE_TYPE=${MACHINE_TYPE:-n2-standard-2}
BOOT_DISK_SIZE=${BOOT_DISK_SIZE:-20GB}
NETWORK=${NETWORK:-default}
FIREWALL_RULE=${FIREWALL_RULE:-leafnet-serve-8080}
# The firewall rule admits the VMs carrying this network tag.
NETWORK_TAG=leafnet-serve
CLOUD_INIT=config/gce/cloud-init.yaml
TOKEN_SECRET=${TOKEN_SECRET:-leafnet-serve-token}
# Where Google's load balancers and their health checks come from: with --domain, the only sources admitted.
LB_RANGES=130.211.0.0/22,35.191.0.0/16
if [ -n "${DOMAIN:-}" ]; then
  SOURCE_RANGES=$LB_RANGES
elif [ "${UPDATE:-}" != 1 ] && [ "${NO_FIREWALL:-}" != 1 ]; then
  require SOURCE_RANGES --source-ranges
fi
# A range wider than a /8 (IPv4) or a /32 (IPv6), 0.0.0.0/0 and ::/0 included, is most of the internet.
for range in ${SOURCE_RANGES:+${SOURCE_RANGES//,/ }}; do
  prefix=${range##*/}
  [ "$prefix" != "$range" ] || continue  # a single address
  if { [[ $range == *:* ]] && [ "$prefix" -lt 32 ]; } || { [[ $range != *:* ]] && [ "$prefix" -lt 8 ]; }; then
    [ "${ALLOW_ANYWHERE:-}" = 1 ] ||
      die "--source-ranges $range opens plain HTTP to a large part of the internet: use --domain (HTTPS load balancer) or pass --allow-anywhere"
  fi
done
require_gcloud
image=$(serve_image)
where=(--project "$PROJECT" --zone "$ZONE")

check_image "$image"
if [ "${UPDATE:-}" = 1 ]; then
  run gcloud compute instances add-metadata "$INSTANCE" "${where[@]}" --metadata "leafnet-image=$image"
  run gcloud compute ssh "$INSTANCE" "${where[@]}" --command 'sudo systemctl restart leafnet.service'
else
  if [ "${NO_FIREWALL:-}" != 1 ]; then
    run gcloud compute firewall-rules create "$FIREWALL_RULE" --project "$PROJECT" --network "$NETWORK" \
      --direction INGRESS --action ALLOW --rules tcp:8080 --source-ranges "$SOURCE_RANGES" \
      --target-tags "$NETWORK_TAG"
  fi
  # leafnet-gpu-driver: the cloud-init's leafnet-gpu.service installs that driver at boot (none: a CPU VM).
  metadata="leafnet-image=$image,leafnet-token-secret=$TOKEN_SECRET,google-logging-enabled=true"
  create=(gcloud compute instances create "$INSTANCE" "${where[@]}" --machine-type "$MACHINE_TYPE"
    ${gpu[@]+"${gpu[@]}"} --network "$NETWORK" --image-family cos-stable --image-project cos-cloud
    --boot-disk-size "$BOOT_DISK_SIZE" --tags "$NETWORK_TAG" --metadata-from-file "user-data=$CLOUD_INIT"
    --metadata "$metadata${GPU_DRIVER:+,leafnet-gpu-driver=$GPU_DRIVER}")
  # The cloud-platform scope, so the account's IAM roles alone decide what it may do: Secret Manager
  # (the token) is outside the default scopes.
  [ -z "${VM_SERVICE_ACCOUNT:-}" ] || create+=(--service-account "$VM_SERVICE_ACCOUNT")
  create+=(--scopes cloud-platform)
  run "${create[@]}"
fi
if [ -n "${DOMAIN:-}" ] && [ "${UPDATE:-}" != 1 ]; then
  # The HTTPS load balancer: an instance group of the VM, a health check on the proxy's open /ping, a backend
  # service, a URL map, a Google-managed certificate for DOMAIN, the HTTPS proxy and a global address.
  group=$INSTANCE-group
  run gcloud compute instance-groups unmanaged create "$group" "${where[@]}"
  run gcloud compute instance-groups unmanaged add-instances "$group" "${where[@]}" --instances "$INSTANCE"
  run gcloud compute instance-groups set-named-ports "$group" "${where[@]}" --named-ports http:8080
  run gcloud compute health-checks create http "$INSTANCE-ping" --project "$PROJECT" --port 8080 \
    --request-path /ping
  run gcloud compute backend-services create "$INSTANCE-backend" --project "$PROJECT" --global --protocol HTTP \
    --port-name http --health-checks "$INSTANCE-ping" --timeout 60s
  run gcloud compute backend-services add-backend "$INSTANCE-backend" --project "$PROJECT" --global \
    --instance-group "$group" --instance-group-zone "$ZONE"
  run gcloud compute url-maps create "$INSTANCE-lb" --project "$PROJECT" --global --default-service "$INSTANCE-backend"
  run gcloud compute ssl-certificates create "$INSTANCE-cert" --project "$PROJECT" --global --domains "$DOMAIN"
  run gcloud compute target-https-proxies create "$INSTANCE-https" --project "$PROJECT" --global \
    --url-map "$INSTANCE-lb" --ssl-certificates "$INSTANCE-cert"
  run gcloud compute addresses create "$INSTANCE-ip" --project "$PROJECT" --global
  run gcloud compute forwarding-rules create "$INSTANCE-https" --project "$PROJECT" --global \
    --target-https-proxy "$INSTANCE-https" --address "$INSTANCE-ip" --ports 443
  lb_address=""
  capture lb_address gcloud compute addresses describe "$INSTANCE-ip" --project "$PROJECT" --global \
    --format 'get(address)'
  note "Point DNS for $DOMAIN at $lb_address (an A record); the certificate is issued once it resolves."
fi
address=""
capture address gcloud compute instances describe "$INSTANCE" "${where[@]}" \
  --format 'get(networkInterfaces[0].accessConfigs[0].natIP)'

note "$INSTANCE runs $image; serving starts a minute or two after boot (image pull, model load${GPU_TYPE:+, driver install})."
[ -z "${GPU_TYPE:-}" ] || [ "${UPDATE:-}" = 1 ] ||
  note "The VM needs $GPU_TYPE quota in $ZONE; the model log names the device: grep 'leafnet: loaded' /var/lib/leafnet/logs/model_log.log"
note "The proxy wants a bearer token from Secret Manager secret $TOKEN_SECRET (one token per line, 32+ characters"
note "of [A-Za-z0-9_-]); the VM's service account needs roles/secretmanager.secretAccessor on it. Create it with"
note "  openssl rand -hex 32 | $(command_line gcloud secrets create "$TOKEN_SECRET" --project "$PROJECT" --data-file=-)"
note "The VM reads it again every 5 minutes: rotate by adding a version, no restart (docs/security.md)."
if [ -n "${DOMAIN:-}" ]; then
  note "  curl -X POST -H \"Authorization: Bearer \$TOKEN\" https://$DOMAIN/predictions/leafnet --data-binary @leaf.png"
else
  note "Call the model (from an address in the firewall rule's source ranges; plain HTTP):"
  note "  curl -X POST -H \"Authorization: Bearer \$TOKEN\" http://$address:8080/predictions/leafnet --data-binary @leaf.png"
fi
