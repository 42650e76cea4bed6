# Airflow image for the immutable worker image rollout (used by docker-compose.yaml).
#
# The base tag's Airflow version must equal the apache-airflow pin in requirements.txt and its
# Python the one pyproject.toml requires; tests/test_compose.py checks both.
FROM apache/airflow:3.3.2-python3.11

# The same pinned set `make test` installs into .venv (apache-airflow==3.3.2, celery==5.6.3:
# celery 5.7.0 breaks apache-airflow-providers-celery 3.26.0). Naming the base image's
# AIRFLOW_VERSION next to -r makes pip fail the build, instead of silently replacing Airflow,
# if requirements.txt ever pins another version.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.txt

# Bake the project in so the image also runs without bind mounts (a registry image, Kubernetes).
# docker-compose.yaml mounts the working tree over these three paths.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/

# Same import roots as pyproject.toml's pytest pythonpath ("plugins", "."): the `image_rollout`
# package and `include` (`python -m include.sandbox`) import the same way everywhere.
ENV PYTHONPATH=/opt/airflow:/opt/airflow/plugins
