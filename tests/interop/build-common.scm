;;; build-common.scm -- helpers loaded by the build scenario scripts
;;; (build-*.scm), on top of common.scm.
;;;
;;; There are no Guix bootstrap binaries in the Guix root, so every builder
;;; is the `sh' of a static busybox: the root's /bin/busybox is copied into
;;; a directory `busybox/bin/' next to one symlink per applet, and that tree
;;; is added to the store (recursive, sha256).  Derivations then run
;;; `<busybox>/bin/sh -c SCRIPT' with `<busybox>/bin' as PATH.
;;;
;;; Keeps true: what a build step records depends only on the daemon's
;;; behaviour: the process ids in `@ build-started', `@ build-log' and
;;; `killing process' lines are replaced by `PID', and nothing else of the log text is
;;; changed; a step that builds records the outcome (status and message),
;;; the log text and, for each output, whether it is valid and its path
;;; info (hash, size, references, deriver).

(load (string-append (dirname (current-filename)) "/common.scm"))
(use-modules (guix derivations)
             (ice-9 popen)
             (ice-9 rdelim)
             (ice-9 regex))

(define %system "x86_64-linux")

;;; The busybox store item.

(define (busybox-applets)
  "The applet names of the root's busybox."
  (let* ((port (open-pipe* OPEN_READ "/bin/busybox" "--list"))
         (names (let loop ((acc '()))
                  (let ((line (read-line port)))
                    (if (eof-object? line)
                        (reverse acc)
                        (loop (if (string-null? line) acc (cons line acc))))))))
    (close-pipe port)
    names))

(define (add-busybox! store)
  "Add a `busybox' directory with `bin/busybox' and its applet links to
STORE; return its store path."
  (let* ((dir (scratch-file "busybox"))
         (bin (string-append dir "/bin")))
    (mkdir dir #o755)
    (mkdir bin #o755)
    (copy-file "/bin/busybox" (string-append bin "/busybox"))
    (chmod (string-append bin "/busybox") #o755)
    (for-each (lambda (applet)
                (unless (string=? applet "busybox")
                  (symlink "busybox" (string-append bin "/" applet))))
              (busybox-applets))
    (add-to-store store "busybox" #t "sha256" dir)))

;;; Derivations run by busybox's sh.

(define* (sh-derivation store busybox name script
                        #:key (outputs '("out")) (env-vars '())
                        (inputs '()) (sources '())
                        hash hash-algo recursive?
                        references-graphs allowed-references
                        disallowed-references leaked-env-vars)
  "A derivation NAME whose builder is BUSYBOX's `sh -c SCRIPT'."
  (derivation store name (string-append busybox "/bin/sh")
              (list "-c" script)
              #:system %system
              #:env-vars (cons `("PATH" . ,(string-append busybox "/bin"))
                               env-vars)
              #:inputs inputs
              #:sources (cons busybox sources)
              #:outputs outputs
              #:hash hash #:hash-algo hash-algo #:recursive? recursive?
              #:references-graphs references-graphs
              #:allowed-references allowed-references
              #:disallowed-references disallowed-references
              #:leaked-env-vars leaked-env-vars))

(define (drv-file drv) (derivation-file-name drv))

(define (outputs-of drv)
  "The (NAME . PATH) pairs of DRV's outputs."
  (derivation->output-paths drv))

;;; Log text.

(define (normalize-log text)
  "TEXT with the process ids of build traces replaced by `PID'."
  (let* ((text (regexp-substitute/global
                #f "(@ build-started [^\n]* )[0-9]+\n" text
                'pre 1 "PID\n" 'post))
         (text (regexp-substitute/global
                #f "@ build-log [0-9]+ " text
                'pre "@ build-log PID " 'post))
         ;; The builder's process id as the daemon sees it.
         (text (regexp-substitute/global
                #f "killing process [0-9]+\n" text
                'pre "killing process PID\n" 'post)))
    text))

(define (lines-matching text prefix)
  "The lines of TEXT that start with PREFIX."
  (filter (cut string-prefix? prefix <>)
          (string-split text #\newline)))

(define (count-lines text prefix)
  (length (lines-matching text prefix)))

(define (count-traces text trace)
  "How many times the build trace TRACE (such as `@ build-started') shows
in TEXT; the client may put a `|' margin in front of a trace line."
  (count (lambda (line)
           (string-prefix? trace (string-trim line (char-set #\| #\space))))
         (string-split text #\newline)))

;;; Reference graphs.

(define (expected-graph store paths)
  "The `exportReferencesGraph' text of the closure of PATHS, as the client
computes it from the daemon's answers: for each path in sorted order, the
path, an empty deriver line, the number of references and the references."
  (string-concatenate
   (map (lambda (p)
          (let ((refs (sort (references store p) string<?)))
            (string-append p "\n\n" (number->string (length refs)) "\n"
                           (string-concatenate
                            (map (cut string-append <> "\n") refs)))))
        (sort (requisites store paths) string<?))))

;;; Build steps.

(define %last-log "")

(define* (build! label store things #:key (mode (build-mode normal))
                 (encode (const #t)) (record-log? #t))
  "Build THINGS (derivations, derivation file names or store paths) on
STORE; record the outcome and, if RECORD-LOG?, the normalized log under
LABEL and return the outcome.  The raw log text is left in `%last-log'."
  (let* ((log (open-output-string))
         (files (map (lambda (x) (if (derivation? x) (drv-file x) x)) things))
         (outcome (parameterize ((current-build-output-port log))
                    (attempt (lambda ()
                               (build-things store files mode)))))
         (text (get-output-string log)))
    (set! %last-log text)
    (when %trace?
      (format (current-error-port) "~a: ~s~%~a~%" label outcome text))
    (record! label
             (append (outcome->json outcome encode)
                     (if (or (string-null? text) (not record-log?))
                         '()
                         `(("log" . ,(normalize-log text))))))
    outcome))

(define* (expect-built! label store things #:key (mode (build-mode normal))
                        (record-log? #t))
  "Like `build!', and check that the build succeeded."
  (let ((o (build! label store things #:mode mode #:record-log? record-log?)))
    (check! label (ok? o) o %last-log)
    o))

(define* (expect-build-error! label store things text status
                              #:key (mode (build-mode normal)))
  "Like `build!', and check that it failed with STATUS and a message
containing TEXT."
  (let ((o (build! label store things #:mode mode)))
    (check! label (and (error? o)
                       (error-contains? o text)
                       (= (error-status o) status))
            'expected text status 'got o)
    o))

(define (check-log! label text)
  "Check that the last build's log contains TEXT."
  (check! label (string-contains %last-log text) 'expected text
          'log %last-log))

(define (record-output! label store path)
  "Record whether PATH is valid and, if so, its path info; check the info
against the files."
  (let ((valid (valid-path? store path)))
    (if valid
        (let ((info (query-path-info store path)))
          (check-path-info! label info path)
          (record! label `(("valid" . #t) ,@(path-info->json info))))
        (record! label '(("valid" . #f))))
    valid))

(define (record-outputs! label store drv)
  "Record every output of DRV with `record-output!'; return #t if all are
valid."
  (every (match-lambda
           ((name . path)
            (record-output! (string-append label ": output " name)
                            store path)))
         (outputs-of drv)))

(define (file-text file)
  "The contents of FILE as text, or #f if it cannot be read."
  (false-if-exception (call-with-input-file file get-string-all)))

(define (record-files! label file)
  "Record the `listing' of FILE, or that it does not exist."
  (record! label
           (if (false-if-exception (lstat file))
               (listing file)
               "missing")))

(define (output-file drv file)
  "The name of FILE inside DRV's `out' output."
  (string-append (derivation->output-path drv) "/" file))

;;; Programs and stored logs.

(define (command-output . argv)
  "Run ARGV; return its exit status and its standard output as text (its
standard error goes to ours)."
  (let* ((port (apply open-pipe* OPEN_READ argv))
         (text (get-string-all port))
         (status (close-pipe port)))
    (values (status:exit-val status) text)))

(define (stored-log store file)
  "The stored build log of FILE (a derivation file name) as text, or #f if
there is none; compressed logs are uncompressed with busybox."
  (let ((log (log-file store file)))
    (and log
         (let-values (((status text)
                       (cond ((string-suffix? ".gz" log)
                              (command-output "/bin/busybox" "gunzip" "-c" log))
                             ((string-suffix? ".bz2" log)
                              (command-output "/bin/busybox" "bunzip2" "-c" log))
                             (else (values 0 (file-text log))))))
           (and (eqv? status 0) text)))))
