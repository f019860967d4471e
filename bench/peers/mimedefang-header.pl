# MIMEDefang filter of the benchmark: add one header field to every
# message, nothing else (peer (d), the counterpart of the null milter and
# of opes-milter's trace-only policy).
sub filter_end {
    my($entity) = @_;
    action_add_header("X-Bench", "1");
}
1;
