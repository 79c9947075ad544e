#!/bin/sh
# PostgreSQL's first start (docker-entrypoint-initdb.d): the worker's login role owns the
# omnistream database and is not a superuser.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v pw="$OMNISTREAM_DB_PASSWORD" <<'SQL'
CREATE ROLE omnistream LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'pw';
CREATE DATABASE omnistream OWNER omnistream;
SQL
