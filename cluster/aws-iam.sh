#!/usr/bin/env bash
# One-time IAM setup for cluster/aws.yaml: instance profiles `mimray-head` (launches and stops
# workers, hands them their profile, reads the DLAMI parameter, bucket and image) and
# `mimray-worker` (bucket and image only), with the policies in cluster/iam/.
#
#   cluster/aws-iam.sh BUCKET          # with an AWS login that may create IAM roles
#
# Re-running it updates the policies. `aws iam delete-*` in reverse order removes it all.
set -euo pipefail
bucket=${1:?usage: cluster/aws-iam.sh BUCKET}
account=$(aws sts get-caller-identity --query Account --output text)
here=$(cd "$(dirname "$0")" && pwd)
trust='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'

for name in head worker; do
  role=mimray-$name
  aws iam get-role --role-name "$role" > /dev/null 2>&1 ||
    aws iam create-role --role-name "$role" --assume-role-policy-document "$trust" > /dev/null
  sed -e "s/BUCKET/$bucket/g" -e "s/ACCOUNT_ID/$account/g" "$here/iam/aws-$name-policy.json" \
    > "/tmp/$role-policy.json"
  aws iam put-role-policy --role-name "$role" --policy-name "$role" \
    --policy-document "file:///tmp/$role-policy.json"
  if ! aws iam get-instance-profile --instance-profile-name "$role" > /dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$role" > /dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
  fi
  echo "instance profile $role: ready"
done
