#!/usr/bin/env bash
# usage: scripts/deploy_gce.sh [--dry-run] [--update] [options]
#
# Creates a Container-Optimized OS VM that runs the leafnet serve image with config/torchserve/gce.properties
# (inference on port 8080 behind TorchServe's token authorization) and a firewall rule that opens port 8080
# to SOURCE_RANGES only; then prints how to fetch the inference key and call the model. --update points an
# existing VM at another image and restarts the server instead.
# Every option can come from the environment variable beside it; an option beats the variable.
#
#   --project P            PROJECT         Google Cloud project (required)
#   --zone Z               ZONE            VM zone (us-central1-a)
#   --region R             REGION          Artifact Registry region (the zone's region)
#   --instance NAME        INSTANCE        VM name (leafnet-serve)
#   --image URI            IMAGE           image to run (default: the one .github/workflows/image.yml pushes,
#                                          REGION-docker.pkg.dev/PROJECT/REPOSITORY/leafnet-serve:IMAGE_TAG)
#   --repository NAME      REPOSITORY      Artifact Registry repository (leafnet)
#   --image-tag TAG        IMAGE_TAG       image tag: a commit SHA, or main for main's latest (main)
#   --machine-type TYPE    MACHINE_TYPE    (n2-standard-2: 2 vCPUs with AVX-512 VNNI for the int8 model)
#   --boot-disk-size SIZE  BOOT_DISK_SIZE  (20GB)
#   --source-ranges CIDRS  SOURCE_RANGES   who may reach port 8080, e.g. 203.0.113.0/24 (required to create
#                                          the firewall rule)
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
  --network:NETWORK --firewall-rule:FIREWALL_RULE --service-account:VM_SERVICE_ACCOUNT)
SWITCHES=(--no-firewall:NO_FIREWALL --update:UPDATE)
parse_options "$@"

require PROJECT --project
ZONE=${ZONE:-us-central1-a}
REGION=${REGION:-${ZONE%-*}}
INSTANCE=${INSTANCE:-leafnet-serve}
REPOSITORY=${REPOSITORY:-leafnet}
IMAGE_TAG=${IMAGE_TAG:-main}
MACHINE_TYPE=${MACHINE_TYPE:-n2-standard-2}
BOOT_DISK_SIZE=${BOOT_DISK_SIZE:-20GB}
NETWORK=${NETWORK:-default}
FIREWALL_RULE=${FIREWALL_RULE:-leafnet-serve-8080}
# The firewall rule admits the VMs carrying this network tag.
NETWORK_TAG=leafnet-serve
CLOUD_INIT=config/gce/cloud-init.yaml
if [ "${UPDATE:-}" != 1 ] && [ "${NO_FIREWALL:-}" != 1 ]; then
  require SOURCE_RANGES --source-ranges
fi
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
  create=(gcloud compute instances create "$INSTANCE" "${where[@]}" --machine-type "$MACHINE_TYPE"
    --network "$NETWORK" --image-family cos-stable --image-project cos-cloud --boot-disk-size "$BOOT_DISK_SIZE"
    --tags "$NETWORK_TAG" --metadata-from-file "user-data=$CLOUD_INIT"
    --metadata "leafnet-image=$image,google-logging-enabled=true")
  # An explicit service account gets the cloud-platform scope, so its IAM roles alone decide what it may do.
  [ -z "${VM_SERVICE_ACCOUNT:-}" ] || create+=(--service-account "$VM_SERVICE_ACCOUNT" --scopes cloud-platform)
  run "${create[@]}"
fi
address=""
capture address gcloud compute instances describe "$INSTANCE" "${where[@]}" \
  --format 'get(networkInterfaces[0].accessConfigs[0].natIP)'

note "$INSTANCE runs $image; TorchServe starts a minute or two after boot (image pull, model load)."
note "TorchServe wrote new keys at start; the inference key is in key_file.json inside the container:"
note "  $(command_line gcloud compute ssh "$INSTANCE" --project "$PROJECT" --zone "$ZONE" \
  --command 'sudo docker exec leafnet cat key_file.json')"
note "Call the model with it (from an address in the firewall rule's source ranges):"
note "  curl -X POST -H 'Authorization: Bearer <inference key>' http://$address:8080/predictions/leafnet -T leaf.png"
