DROP TABLE annals_subject_keys;
