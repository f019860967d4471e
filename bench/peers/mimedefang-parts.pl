# MIMEDefang filter of the benchmark: walk every MIME part and refuse a
# blocked attachment by file name or declared type, then add one header
# field (peer (d) per part, the counterpart of opes-milter's attachments
# service). filter() is called for every leaf part of the message.
sub filter {
    my($entity, $fname, $ext, $type) = @_;
    if (re_match($entity, '\.(exe|scr|js|jse|vbs|vbe|bat|cmd|com|pif|jar|msi|hta|wsf|cpl|lnk|ps1)$')) {
        return action_bounce("Attachment not accepted: $fname");
    }
    if (lc($type) =~ m{^application/(x-msdownload|x-dosexec|x-msdos-program|x-executable)$}) {
        return action_bounce("Attachment not accepted: $type");
    }
    return action_accept();
}
sub filter_end {
    my($entity) = @_;
    action_add_header("X-Bench", "1");
}
1;
