;;; build-sandbox.scm -- what a builder sees: a simple build, then a
;;; builder that writes down its world (user and group ids, host and domain
;;; names, environment, the entries of `/' and `/dev', its working
;;; directory, umask, /etc files, network interfaces, whether it is process
;;; 1, whether the loopback HTTP server is reachable), once as an ordinary
;;; derivation and once as a fixed-output one.
;;;
;;; Usage: guix repl -- build-sandbox.scm TRANSCRIPT.json BASE-URL
;;; where BASE-URL (`http://127.0.0.1:PORT') serves `/hello' with the text
;;; "hello over http\n".

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define base-url
  (match (script-arguments)
    ((url . _) url)
    (_ (error "usage: build-sandbox.scm TRANSCRIPT.json BASE-URL"))))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

;;; A simple build.

(define simple
  (sh-derivation s bb "simple"
                 "echo hello from the builder; echo 'hi' > $out; echo bye >&2"))
(expect-built! "simple" s (list simple))
(check-log! "simple: builder output in the log" "hello from the builder")
(record-outputs! "simple" s simple)
(record-files! "simple: files" (derivation->output-path simple))

;;; The builder's world.

(define report-script
  ;; The server's port changes from run to run, so the URL is given in the
  ;; environment (`url') and never written into the report.
  (string-append
   "{ echo '== id'; id; echo '== id -G'; id -G;"
   " echo '== hostname'; hostname;"
   " echo '== domainname'; cat /proc/sys/kernel/domainname;"
   " echo '== process 1'; if [ $$ = 1 ]; then echo yes; else echo no; fi;"
   " echo '== env'; env | grep -v '^url=' | sort;"
   " echo '== /'; ls -1a / | sort;"
   " echo '== /dev'; ls -1a /dev | sort;"
   " echo '== pwd'; pwd; echo '== umask'; umask;"
   " echo '== /etc/passwd'; cat /etc/passwd;"
   " echo '== /etc/group'; cat /etc/group;"
   " echo '== /etc/hosts'; cat /etc/hosts;"
   " echo '== network interfaces';"
   " tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort;"
   " echo '== network';"
   " if wget -q -T 5 -O - \"$url/hello\" >/dev/null 2>&1;"
   " then echo reachable; else echo unreachable; fi;"
   " echo '== stdin'; if read -r line; then echo readable; else echo eof; fi;"
   " } > $report"))

(define view
  (sh-derivation s bb "sandbox-view"
                 (string-append "report=$out; " report-script)
                 #:env-vars `(("url" . ,base-url))))
(expect-built! "sandbox view" s (list view))
(let ((text (file-text (derivation->output-path view))))
  (record! "sandbox view: report" text)
  ;; In a sandbox (the builder is process 1 of its own namespace), there
  ;; is no network but the loopback.
  (when (and text (string-contains text "== process 1\nyes\n"))
    (check! "sandbox view: no network"
            (string-contains text "== network\nunreachable\n")
            text)))

;; A fixed-output derivation may use the network, but in the chroot the
;; C++ daemon 1.5.0 gives it one only through slirp4netns, which the Guix
;; root lacks ("network access disabled"); without a chroot it has the
;; host's.  Its report goes to the log.
(define fixed-text "fixed\n")
(define fixed-view
  (sh-derivation s bb "sandbox-view-fixed"
                 (string-append "report=$TMPDIR/report; " report-script
                                "; cat $TMPDIR/report; echo fixed > $out")
                 #:env-vars `(("url" . ,base-url))
                 #:hash (sha256 (string->utf8 fixed-text))
                 #:hash-algo 'sha256))
(expect-built! "fixed-output sandbox view" s (list fixed-view))
(record-outputs! "fixed-output sandbox view" s fixed-view)

(step-alive! "alive at the end" s #t)
(finish!)
